"""A long job: 10^5 problems through the default Ray path (a search worker; the zero-cost
backends inside it, so the run takes minutes), watching the driver.

Reported: the driver's RSS over the run (sampled every ``--every`` seconds; growth after the
warm-up, the first 10% of the problems, must stay under 10%), its open files, the size of
``results.jsonl`` and of ``trees/``, and the time ``--resume`` takes on the finished run dir
(reading 10^5 result lines back, nothing left to run).

    .venv/bin/python -m benchmarks.long_job [--problems 100000] [--smoke]
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import threading
import time
from pathlib import Path

import ray

from actors.fleet import WorkerFleet
from actors.plane import FleetPlane
from benchmarks.harness import zero_cost_job
from treesearch.runner import run_job
from treesearch.tasks.base import Problem


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def du_mb(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 2**20
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", type=int, default=100_000)
    ap.add_argument("--every", type=float, default=5.0)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    n = 500 if args.smoke else args.problems
    job = zero_cost_job("beam", 1362, "run.concurrency=256", "run.lease=64")
    base = job.problems
    job.problems = [Problem(f"{p.id}#{i // len(base)}", p.prompt, p.data) for i, p in
                    zip(range(n), itertools.cycle(base))]  # fmt: skip
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    samples: list[tuple[float, int, float, int]] = []  # (seconds, problems done, RSS MB, open files)
    stop = threading.Event()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        fleet = WorkerFleet(job, None, 1)  # the backends inside the worker

        def watch() -> None:
            t0 = time.perf_counter()
            while not stop.is_set():
                results = out / "results.jsonl"
                done = sum(1 for _ in results.open("rb")) if results.exists() else 0
                samples.append((time.perf_counter() - t0, done, rss_mb(), open_files()))
                stop.wait(args.every)

        watcher = threading.Thread(target=watch)
        watcher.start()
        t0 = time.perf_counter()
        try:
            summary = run_job(job, out, FleetPlane(fleet), progress=False)
        finally:
            wall = time.perf_counter() - t0
            stop.set()
            watcher.join()
            fleet.shutdown()
        samples.append((wall, n, rss_mb(), open_files()))
        results_mb, trees_mb = du_mb(out / "results.jsonl"), du_mb(out / "trees")
        t0 = time.perf_counter()
        again = run_job(job, out, FleetPlane(fleet), progress=False, resume=True)
        resume_s = time.perf_counter() - t0
    ray.shutdown()
    assert summary["n_problems"] == again["n_problems"] == n and summary["failed"] == 0
    warm = next((s for s in samples if s[1] >= n // 10), samples[0])
    peak = max(s[2] for s in samples if s[0] >= warm[0])
    growth = (peak - warm[2]) / warm[2]
    print(f"{n:,} problems, beam on Game of 24, one search worker with the zero-cost backends, {wall:.0f} s")
    print(f"{'seconds':>8} {'done':>8} {'RSS MB':>8} {'open files':>10}")
    step = max(1, len(samples) // 12)
    for s in samples[::step] + ([samples[-1]] if (len(samples) - 1) % step else []):
        print(f"{s[0]:>8.0f} {s[1]:>8,} {s[2]:>8.1f} {s[3]:>10}")
    print(
        f"results.jsonl {results_mb:.1f} MB ({1024 * results_mb / n:.2f} KB/problem), "
        f"trees/ {trees_mb:.1f} MB ({1024 * trees_mb / n:.2f} KB/problem); "
        f"resume of the finished run dir {resume_s:.1f} s"
    )
    print(
        f"ratio: driver RSS {warm[2]:.0f} MB once warm ({warm[1]:,} problems), peak {peak:.0f} MB after: "
        f"growth {growth:.1%} (target < 10%); open files {min(s[3] for s in samples)}-"
        f"{max(s[3] for s in samples)}"
    )


if __name__ == "__main__":
    main()
