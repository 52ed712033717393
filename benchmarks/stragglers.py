"""A slow replica in the pool: routing by expected wait against routing by queue length.

Four generator replicas (:class:`benchmarks.harness.SimCluster`: continuous batching with a
GPU-like step time) and one PRM replica, on two clusters side by side in one run: *even* (four
at speed 1) and *straggler* (three at speed 1, one 10x slower). The async engine runs the same
problems with each routing: by expected wait (each replica's load times its reported seconds
per request; a key sent away repeatedly is homed again) and by queue length (the rule before).

The job: ``--problems`` (1,024) Game-of-24 puzzles, ``--concurrency`` (128) searched at once, as
a job with more problems than slots runs. Reported per algorithm (async beam, MCTS): nodes/s,
the affinity hit rate (requests served by their tree's home replica: the prefix-cache lever),
keys homed again and the slow replica's share of requests. Targets: with the
straggler, routing by wait keeps >= 60% of the even cluster's nodes/s (the final ``ratio:``
line prints the smaller of beam's and MCTS's kept shares); on the even cluster it keeps
nodes/s and the hit rate within 5% of routing by queue length. Medians of ``--runs`` runs.

    .venv/bin/python -m benchmarks.stragglers [--problems 1024] [--concurrency 128] [--runs 3] [--smoke]
"""

from __future__ import annotations

import argparse
import time

import ray

from actors.replicas import Replicas
from benchmarks.harness import SimReplica, median_of, replica_transports, run_engine, sim_cluster_actor, table
from benchmarks.harness import zero_cost_job as job_of

CLUSTERS = {"even": [1.0, 1.0, 1.0, 1.0], "straggler": [1.0, 1.0, 1.0, 10.0]}
ROUTINGS = {"wait": True, "queue": False}


def measure(algo: str, n: int, concurrency: int, replicas: Replicas, by_wait: bool) -> dict[str, float]:
    """One run: nodes/s, affinity hit rate (%), keys homed again, the last replica's share."""
    job = job_of(algo, n, "generator.resources.max_batch=8")  # small calls spread over replicas
    gen, scorer = replica_transports(job, replicas)
    gen.router.speeds.by_wait = by_wait
    t0 = time.perf_counter()
    _, ledger, _ = run_engine(job, gen, scorer, concurrency=concurrency)
    wall = time.perf_counter() - t0
    stats = gen.router.stats
    return {
        "nodes_per_s": ledger.nodes / wall,
        "hit_rate": 100.0 * stats.affinity_hits / max(1, stats.affinity_hits + stats.affinity_moves),
        "rehomed": float(stats.rehomed),
        "slow_share": 100.0 * stats.routed[-1] / max(1, sum(stats.routed)),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", type=int, default=1024)
    ap.add_argument("--concurrency", type=int, default=128, help="problems searched at once")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--latency-ms", type=float, default=20.0, help="one call's latency at small batches")
    ap.add_argument("--rate", type=float, default=2000.0, help="samples per second of a saturated replica")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    n, runs, conc = (32, 1, 16) if args.smoke else (args.problems, args.runs, args.concurrency)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    lat = args.latency_ms / 1e3
    rows, figures = [], {}
    for cluster_name, speeds in CLUSTERS.items():
        cluster = sim_cluster_actor().remote(
            {"generator": (len(speeds), lat, args.rate, speeds), "prm": (1, lat / 4, 8 * args.rate, [1.0])}
        )
        ray.get(cluster.ready.remote())
        replicas = Replicas(
            [SimReplica(cluster, "generator", i) for i in range(len(speeds))],
            [SimReplica(cluster, "prm", 0)],
            1.28e6,
            0.0,
        )
        for algo in ("beam", "mcts"):
            measure(algo, n, conc, replicas, True)  # warm-up: the simulated answers are memoised
            for routing, by_wait in ROUTINGS.items():
                got = median_of(runs, lambda a=algo, w=by_wait, r=replicas: measure(a, n, conc, r, w))
                figures[cluster_name, algo, routing] = got
                rows.append({"cluster": cluster_name, "algorithm": algo, "routing": routing, **got})
        ray.kill(cluster)
    ray.shutdown()
    print(
        f"generator replicas at speeds {CLUSTERS} (x step time); {n} problems, {conc} at once; "
        f"medians of {runs} run(s)"
    )
    print(
        table(
            rows,
            [
                ("cluster", "cluster", ""),
                ("algorithm", "algorithm", ""),
                ("routing", "routing", ""),
                ("nodes_per_s", "nodes/s", ",.0f"),
                ("hit_rate", "affinity hit %", ".1f"),
                ("rehomed", "rehomed keys", ".0f"),
                ("slow_share", "last replica %", ".1f"),
            ],
        )
    )
    kept = {}
    for algo in ("beam", "mcts"):
        even, slow = figures["even", algo, "wait"], figures["straggler", algo, "wait"]
        before = (
            figures["straggler", algo, "queue"]["nodes_per_s"] / figures["even", algo, "queue"]["nodes_per_s"]
        )
        kept[algo] = slow["nodes_per_s"] / even["nodes_per_s"]
        queue = figures["even", algo, "queue"]
        print(
            f"{algo}: with the straggler, by wait keeps {kept[algo]:.1%} of the even cluster's nodes/s "
            f"(by queue length: {before:.1%}); even cluster, wait / queue: nodes/s "
            f"{even['nodes_per_s'] / queue['nodes_per_s']:.3f}x, hit rate {even['hit_rate']:.1f}% vs "
            f"{queue['hit_rate']:.1f}% (target: within 5%)"
        )
    print(
        f"ratio: kept share of nodes/s with one replica 10x slower: {min(kept.values()):.1%} (target >= 60%)"
    )


if __name__ == "__main__":
    main()
