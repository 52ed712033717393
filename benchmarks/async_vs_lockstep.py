"""Async engine vs a lockstep engine on the same simulated replicas.

Four generator replicas (:class:`benchmarks.harness.SimCluster`: continuous batching with a
GPU-like step time) and one PRM replica, on two clusters: *heterogeneous* (speeds drawn from
[0.6, 1.4]) and *straggler* (three at speed 1, one 10x slower). The lockstep baseline advances
every problem one request at a time and waits for the whole batch (the search-and-learn /
OpenR pattern); the async engine lets each problem continue as soon as its own answers are in,
so a straggler holds only the problems waiting on it. Same problems, same searches (identical
trees; only the timing differs). Target: async >= 1.3x.

    .venv/bin/python -m benchmarks.async_vs_lockstep [--replicas 4] [--problems 128] [--smoke]
"""

from __future__ import annotations

import argparse
import random
import time

import ray

from actors.replicas import Replicas
from benchmarks.harness import (
    SimReplica,
    replica_transports,
    run_engine,
    sim_cluster_actor,
    table,
    zero_cost_job,
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--replicas", type=int, default=4)
    ap.add_argument("--problems", type=int, default=128)
    ap.add_argument("--latency-ms", type=float, default=20.0, help="one call's latency at small batches")
    ap.add_argument("--rate", type=float, default=2000.0, help="samples per second of a saturated replica")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    n = 16 if args.smoke else args.problems
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    rng = random.Random(0)
    clusters = {
        "heterogeneous": [rng.uniform(0.6, 1.4) for _ in range(args.replicas)],
        "straggler": [1.0] * (args.replicas - 1) + [10.0],
    }
    lat = args.latency_ms / 1e3
    rows, ratios = [], {}
    for name, speeds in clusters.items():
        cluster = sim_cluster_actor().remote(
            {"generator": (args.replicas, lat, args.rate, speeds), "prm": (1, lat / 4, 8 * args.rate, [1.0])}
        )
        ray.get(cluster.ready.remote())
        replicas = Replicas(
            [SimReplica(cluster, "generator", i) for i in range(args.replicas)],
            [SimReplica(cluster, "prm", 0)],
            1.28e6,
            0.0,
        )
        for algo in ("beam", "mcts"):
            runs = {mode: measure(algo, n, replicas, mode) for mode in ("lockstep", "async")}
            assert runs["async"]["nodes"] == runs["lockstep"]["nodes"]
            rows += [{"cluster": name, **r} for r in runs.values()]
            ratios[name, algo] = runs["async"]["nodes_per_s"] / runs["lockstep"]["nodes_per_s"]
        ray.kill(cluster)
        print(f"{name}: speeds {[round(s, 2) for s in speeds]} (x step time)")
    ray.shutdown()
    print(f"replicas {args.replicas}, latency {args.latency_ms} ms, {args.rate:g} samples/s saturated")
    print(
        table(
            rows,
            [
                ("cluster", "cluster", ""),
                ("algorithm", "algorithm", ""),
                ("engine", "engine", ""),
                ("nodes", "nodes", ",.0f"),
                ("wall", "wall s", ".2f"),
                ("nodes_per_s", "nodes/s", ",.0f"),
            ],
        )
    )
    print(
        "ratio: async / lockstep nodes per second: "
        + ", ".join(f"{c} {a} {r:.2f}x" for (c, a), r in ratios.items())
        + " (target >= 1.3x)"
    )


def measure(algo: str, n: int, replicas: Replicas, mode: str) -> dict:
    """One run of ``n`` problems with ``algo`` on ``replicas``: nodes, wall (s), nodes/s."""
    # small calls so a depth spreads over the replicas, as a real batch would
    job = zero_cost_job(algo, n, "generator.resources.max_batch=8")
    gen, scorer = replica_transports(job, replicas)
    t0 = time.perf_counter()
    _, ledger, _ = run_engine(job, gen, scorer, concurrency=n, lockstep=mode == "lockstep")
    wall = time.perf_counter() - t0
    return {
        "algorithm": algo,
        "engine": mode,
        "nodes": ledger.nodes,
        "wall": wall,
        "nodes_per_s": ledger.nodes / wall,
    }


if __name__ == "__main__":
    main()
