"""Search workers: what 1, 2 and 4 search workers cost per node, each worker running the
zero-cost backends in its own process (no replicas: what is measured is the engine in the
workers and the driver handing out problems and merging results).

Beam search and MCTS over Game of 24 (every solvable puzzle, repeated to ``--problems``).
After warm-up runs per fleet (see ``main``), ``--runs`` timed runs; medians. Reported for each fleet: each
worker's CPU us per node, the workers' total CPU per node, the driver's CPU per node, nodes/s.
What carries to a cluster is the CPU: on N free cores N workers scale with N as long as their
total CPU per node does not grow. Targets: total worker CPU per node with 2 and 4 workers
<= 1.1x that of 1 worker; driver CPU per node <= 10 us at 4 workers. Wall-time ratios are
printed beside what this box gives N busy processes over one (measured in the same run), with
no target: on 2 cores, 4 workers share 2 cores with the driver. ``--latency-ms`` (60) makes
every backend batch call wait that long, as a replica's answer would, so a worker needs less
than half a core and the CPU per node of 1, 2 and 4 workers is compared without four busy
processes time-sliced on two cores (with ``--latency-ms 0`` they are, and their CPU per node
grows 7-30% from run to run, every worker alike: the box, not the workers).

    .venv/bin/python -m benchmarks.workers [--problems 4000] [--runs 3] [--algorithms beam,mcts]
                                           [--latency-ms 60] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time

import ray

from actors.fleet import WorkerFleet
from benchmarks.harness import median_of, table, zero_cost_job
from treesearch.results import FailureLimit
from treesearch.tasks.base import Problem


def problems_of(job, n: int) -> list[Problem]:
    base = job.problems
    return [
        Problem(f"{p.id}#{i // len(base)}", p.prompt, p.data) for i, p in zip(range(n), itertools.cycle(base))
    ]


def timed(fleet: WorkerFleet, problems: list[Problem]) -> dict[str, float]:
    t0 = time.perf_counter()
    stats = asyncio.run(fleet.run(problems, lambda row, tree: None, FailureLimit(0)))
    wall = time.perf_counter() - t0
    each = [1e6 * c / n for c, n in zip(stats["worker_cpu_seconds"], stats["worker_nodes"], strict=True) if n]
    return {
        "nodes": stats["nodes"],
        "nodes_per_s": stats["nodes"] / wall,
        "each_max_us": max(each),
        "each_min_us": min(each),
        "worker_us": stats["worker_cpu_us_per_node"],
        "driver_us": stats["driver_cpu_us_per_node"],
    }


def _spin(n: int) -> float:
    t0, x, d = time.perf_counter(), 0, {}
    for i in range(n):
        d[i % 1000] = (i, str(i))
        x += hash((i, 2 * i))
    return time.perf_counter() - t0


def box_ceiling(procs: int, n: int = 2_000_000, runs: int = 3) -> float:
    """What this machine gives ``procs`` busy Python processes over one (the same loop in
    each): the best any ``procs`` workers could do here, in wall time."""
    import multiprocessing as mp

    ratios = []
    with mp.get_context("spawn").Pool(procs) as pool:
        for _ in range(runs):
            one = _spin(n)
            t0 = time.perf_counter()
            pool.map(_spin, [n] * procs)
            ratios.append(procs * one / (time.perf_counter() - t0))
    return sorted(ratios)[len(ratios) // 2]


FLEETS = (1, 2, 4)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", type=int, default=4000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--algorithms", default="beam,mcts")
    ap.add_argument(
        "--latency-ms",
        type=float,
        default=60.0,
        help="milliseconds each backend batch call waits (0: none): paced workers need under a core",
    )
    args = ap.parse_args()
    n, runs = (40, 1) if args.smoke else (args.problems, args.runs)
    fleets = (1, 2) if args.smoke else FLEETS  # the smoke checks the script
    ceiling = {k: box_ceiling(k, 200_000 if args.smoke else 2_000_000) for k in fleets[1:]}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows, rate = [], {}
    algorithms = ("beam",) if args.smoke else tuple(args.algorithms.split(","))  # the smoke checks the script
    pace = (
        [f"{s}.latency_s={args.latency_ms / 1000}" for s in ("generator", "prm")] if args.latency_ms else []
    )
    for algo in algorithms:
        job = zero_cost_job(algo, 1362, "run.concurrency=256", "run.lease=32", *pace)
        problems = problems_of(job, n)
        for workers in fleets:
            fleet = WorkerFleet(job, None, workers)  # None: each worker hosts the backends itself
            try:
                # warm-up: the zero-cost backends memoise per process, and problems land on
                # workers as they pull: workers + 1 passes over every problem leave each
                # worker's memo as full as one worker's after one (~99% at 4 workers), so the
                # timed runs compare the engine, not memo hit rates
                for _ in range(1 if args.smoke else workers + 1):
                    timed(fleet, problems)
                row = {
                    "algorithm": algo,
                    "workers": workers,
                    **median_of(runs, lambda f=fleet, ps=problems: timed(f, ps)),
                }
            finally:
                fleet.shutdown()
            rows.append(row)
            rate[(algo, workers)] = row
    ray.shutdown()
    print(
        f"search workers with in-worker zero-cost backends ({args.latency_ms:g} ms a batch call), "
        f"{n} problems, medians of {runs} runs, 2 cores"
    )
    print(
        table(
            rows,
            [
                ("algorithm", "algorithm", ""),
                ("workers", "workers", ""),
                ("nodes", "nodes", ",.0f"),
                ("nodes_per_s", "nodes/s", ",.0f"),
                ("each_min_us", "each worker us/node (min)", ".1f"),
                ("each_max_us", "(max)", ".1f"),
                ("worker_us", "total worker us/node", ".1f"),
                ("driver_us", "driver us/node", ".1f"),
            ],
        )
    )
    for k in fleets[1:]:
        walls = ", ".join(
            f"{a} {rate[(a, k)]['nodes_per_s'] / rate[(a, 1)]['nodes_per_s']:.2f}x" for a in algorithms
        )
        print(
            f"wall: {k} workers / 1 nodes/s: {walls}; this box gives {k} busy processes {ceiling[k]:.2f}x one"
        )
    cpu = [rate[(a, k)]["worker_us"] / rate[(a, 1)]["worker_us"] for a in algorithms for k in fleets[1:]]
    driver = max(rate[(a, fleets[-1])]["driver_us"] for a in algorithms)
    print(
        f"ratio: total worker CPU per node, {' and '.join(map(str, fleets[1:]))} workers over 1: at most "
        f"{max(cpu):.2f}x (target <= 1.1x); driver CPU per node at {fleets[-1]} workers: at most "
        f"{driver:.1f} us (target <= 10 us)"
    )


if __name__ == "__main__":
    main()
