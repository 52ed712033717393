"""A simulated cluster driven by search workers: 1 to 1,024 generator replicas on two cores.

The replicas are asyncio servers in one process (:func:`benchmarks.harness.sim_cluster_actor`)
with a GPU-like service time: a call takes one step's latency, or ``units / rate`` once its
batch saturates the replica. A real replica of a 1.5B policy on an H100 makes ~250 nodes/s
(~80-token steps); here every rate is divided by ``--time-scale`` (20) so the whole
cluster's traffic fits two cores. A size whose traffic would pass ``--max-sim-rate`` (3,200
nodes/s at rates / 20: 256 replicas) runs on a clock slowed further by
``k = replicas x 250 / 20 / 3,200``: rates / (20 k) and every step's latency x k, so it makes
the events per second of 256 replicas (1,024 replicas: rates / 80, 1 s steps); each row
prints its rate divisor. The PRM pool (a quarter as many replicas, 8x the rate per replica)
is never the bottleneck. The search workers, their pools, the driver and Ray are the real ones
(beam search on Game of 24, zero-cost answers), so what is measured is the orchestration at
cluster scale.

Reported per size: nodes/s, generator replicas' busy fraction in the steady middle of the run
(the central 60% of its wall time; the ramp-up and the drain are excluded), CPU per node of the
workers and of the driver. Then: how many replicas one worker keeps busy and how many workers
a cluster of N real GPUs needs, from the measured worker CPU per node at the real rate and a
70% CPU target per worker. The largest size runs with the worker count computed from the size
below it for the traffic it simulates (its replicas x the scaled rate). ``--real-workers``
runs it instead with the count computed for that many *real* GPUs (40-50 for 1,024), each
worker leasing problems for as many replicas as on the real cluster at the scaled rate: on two
cores that many worker processes and the one process simulating every replica are the limit
(benchmarks/README.md's row says by how much), so it is an experiment, not the figure.

    .venv/bin/python -m benchmarks.cluster_sim [--replicas 1,4,16,64,256,1024] [--time-scale 20] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import random
import threading
import time

import ray

from actors.fleet import WorkerFleet
from actors.replicas import Replicas
from benchmarks.harness import SimReplica, sim_cluster_actor, table, zero_cost_job
from treesearch.results import FailureLimit
from treesearch.tasks.base import Problem

REAL_RATE = 250.0  # nodes/s of one real generator replica (1.5B policy, ~80-token steps)
LATENCY_S = 0.25  # one decoding step of a batch
CPU_TARGET = 0.7  # of one core, per worker


def run_size(n: int, scale: float, slow: float, per_replica: int, concurrency: int, workers: int) -> dict:
    """One size: ``n`` generator replicas at real rates / ``scale``, step latencies x ``slow``."""
    rng = random.Random(n)
    prm = max(1, n // 4)
    pools = {
        "generator": (n, LATENCY_S * slow, REAL_RATE / scale, [rng.uniform(0.9, 1.1) for _ in range(n)]),
        "prm": (prm, LATENCY_S / 4 * slow, 8 * REAL_RATE / scale, [1.0] * prm),
    }
    cluster = sim_cluster_actor().remote(pools)
    ray.get(cluster.ready.remote())
    replicas = Replicas(
        [SimReplica(cluster, "generator", i) for i in range(n)],
        [SimReplica(cluster, "prm", i) for i in range(prm)],
        1.28e6,
        0.0,
    )
    job = zero_cost_job(
        "beam",
        1362,  # every solvable puzzle; repeated below under new ids when a size needs more
        f"run.concurrency={concurrency}",
        "run.lease=64",
        "generator.resources.max_batch=16",
        "generator.resources.max_calls_in_flight=4",
        "prm.resources.max_batch=64",
    )
    base = job.problems
    job.problems = [Problem(f"{p.id}#{i // len(base)}", p.prompt, p.data) for i, p in
                    zip(range(n * per_replica), itertools.cycle(base))]  # fmt: skip
    fleet = WorkerFleet(job, replicas, workers)
    samples: list[tuple[float, dict]] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            samples.append(ray.get(cluster.snapshot.remote()))
            stop.wait(1.0)

    poller = threading.Thread(target=poll)
    poller.start()
    failed: list[str] = []

    def on_result(row: dict, tree: bytes | None) -> None:
        if row.get("status") == "failed":
            failed.append(row.get("error", "?"))

    t0 = time.perf_counter()
    try:
        stats = asyncio.run(fleet.run(job.problems, on_result, FailureLimit(10**9)))
    finally:
        wall = time.perf_counter() - t0
        stop.set()
        poller.join()
        fleet.shutdown()
        ray.kill(cluster)
    if failed:
        raise RuntimeError(f"{len(failed)} problems failed, e.g. {failed[0]}")
    # busy over the central 60% of the run
    start, end = samples[0][0], samples[-1][0]
    window = [s for s in samples if start + 0.2 * (end - start) <= s[0] <= start + 0.8 * (end - start)]
    (ta, a), (tb, b) = window[0], window[-1]
    busy = sum(b["generator"]) - sum(a["generator"])
    return {
        "replicas": n,
        "scale": scale,
        "workers": workers,
        "problems": n * per_replica,
        "nodes_per_s": stats["nodes"] / wall,
        "busy": busy / max(1e-9, (tb - ta) * n),
        "worker_us": stats["worker_cpu_us_per_node"],
        "driver_us": stats["driver_cpu_us_per_node"],
        "wall": wall,
    }


def workers_needed(nodes_per_s: float, worker_us_per_node: float) -> int:
    """Search workers that keep up with ``nodes_per_s`` of generator traffic when a worker spends
    ``worker_us_per_node`` of CPU per node and may use ``CPU_TARGET`` of a core."""
    return max(1, math.ceil(nodes_per_s * worker_us_per_node * 1e-6 / CPU_TARGET))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--replicas", default="1,4,16,64,256,1024")
    ap.add_argument("--time-scale", type=float, default=20.0, help="real rates / this")
    ap.add_argument(
        "--max-sim-rate",
        type=float,
        default=3200.0,
        help="nodes/s the simulated cluster may take; larger sizes are scaled further",
    )
    ap.add_argument(
        "--real-workers",
        action="store_true",
        help="run the largest size with the workers its replicas need at real rates",
    )
    ap.add_argument("--per-replica", type=int, default=24, help="problems per generator replica")
    ap.add_argument("--concurrency-per-replica", type=int, default=12)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    sizes = [4] if args.smoke else [int(x) for x in args.replicas.split(",")]
    per = 4 if args.smoke else args.per_replica
    if args.smoke:  # faster rates: the smoke checks the script, and finishes in seconds
        args.time_scale = 5.0
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows, cpu = [], []
    for n in sizes:
        concurrency = max(16, n * args.concurrency_per_replica)
        slow = max(1.0, n * REAL_RATE / args.time_scale / args.max_sim_rate)  # the clock's slow-down
        scale = args.time_scale * slow
        # the count the next size down's worker CPU per node says this one's traffic needs
        demand = n * REAL_RATE / (1.0 if args.real_workers else scale)
        workers = workers_needed(demand, cpu[-1]) if n == sizes[-1] and cpu else 1
        row = run_size(n, scale, slow, per, concurrency, workers)
        rows.append(row)
        cpu.append(row["worker_us"])
        print(
            f"  {n} replicas, rates / {scale:g}, {workers} worker(s): {row['nodes_per_s']:,.0f} nodes/s, "
            f"busy {row['busy']:.0%}, {row['wall']:.0f} s",
            flush=True,
        )
    ray.shutdown()
    print(f"simulated cluster, beam on Game of 24, {per} problems / replica")
    print(
        table(
            rows,
            [
                ("replicas", "replicas", ""),
                ("scale", "rates /", "g"),
                ("workers", "workers", ""),
                ("problems", "problems", ",.0f"),
                ("nodes_per_s", "nodes/s", ",.0f"),
                ("busy", "busy", ".1%"),
                ("worker_us", "worker us/node", ".1f"),
                ("driver_us", "driver us/node", ".1f"),
                ("wall", "wall s", ".0f"),
            ],
        )
    )
    per_node = rows[-2 if len(rows) > 1 else -1]["worker_us"]  # the size the last one's count came from
    print(
        f"one search worker at {per_node:.1f} us/node and {CPU_TARGET:.0%} of a core keeps "
        f"{CPU_TARGET / (per_node * 1e-6) / REAL_RATE:.0f} real replicas busy ({REAL_RATE:.0f} nodes/s "
        "each); workers needed: "
        + ", ".join(f"{g} GPUs: {workers_needed(g * REAL_RATE, per_node)}" for g in (8, 64, 256, 1024))
        + " at real rates"
    )
    last = rows[-1]
    print(
        f"ratio: busy {last['busy']:.1%} at {last['replicas']} simulated replicas with "
        f"{last['workers']} worker(s) (target >= 90%)"
    )


if __name__ == "__main__":
    main()
