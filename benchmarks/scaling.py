"""Scaling on a simulated cluster: 1, 2, 4, 8, 16, 32 generator replicas on local Ray.

Each replica serves one batch at a time (like an engine that is either busy or idle) and
sleeps ``a + b * tokens`` scaled by its speed in [0.8, 1.2]. Work grows with the cluster:
``--per-replica`` problems per replica, all in flight. Reported: throughput (expansions/s),
scaling efficiency = throughput(N) / (N * throughput(1)), and the generators' busy fraction =
time spent serving / (wall * N). Targets at 32 replicas: efficiency >= 90%, busy >= 95%.

    .venv/bin/python -m benchmarks.scaling [--replicas 1,2,4,8,16,32] [--per-replica 24] [--smoke]
"""

from __future__ import annotations

import argparse
import random

import ray

from benchmarks.harness import PoolGenerator, PoolScorer, SimGenerator, prm_replicas, timed_run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--replicas", default="1,2,4,8,16,32")
    ap.add_argument("--per-replica", type=int, default=24)
    ap.add_argument("--a-ms", type=float, default=400.0)
    ap.add_argument("--b-us", type=float, default=50.0)
    ap.add_argument("--algorithm", default="beam")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    counts = [1, 2] if args.smoke else [int(x) for x in args.replicas.split(",")]
    per = 4 if args.smoke else args.per_replica
    a, b = (0.02, 0.0) if args.smoke else (args.a_ms / 1e3, args.b_us / 1e6)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    rng = random.Random(0)
    prm = prm_replicas(2)
    print(
        f"{'replicas':>8} {'problems':>8} {'wall s':>7} {'expansions/s':>13} {'efficiency':>10} {'busy':>6}"
    )
    base = None
    for n in counts:
        gens = [SimGenerator.remote(a, b, rng.uniform(0.8, 1.2), i) for i in range(n)]
        ray.get([h.info.remote() for h in gens + prm])
        problems = per * n
        st = timed_run(args.algorithm, problems, PoolGenerator(gens, max_batch=16, max_calls_in_flight=1),
                       PoolScorer(prm), concurrency=problems)  # fmt: skip
        busy = sum(ray.get([h.busy_seconds.remote() for h in gens])) / (st.wall_s * n)
        rate = st.expansions_per_s
        base = base or rate
        eff = rate / (n * base)
        print(f"{n:>8} {problems:>8} {st.wall_s:>7.2f} {rate:>13,.0f} {eff:>10.0%} {busy:>6.0%}")
        for h in gens:
            ray.kill(h)
    print(
        f"ratio: at {counts[-1]} replicas scaling efficiency {eff:.0%} (target >= 90%), "
        f"busy {busy:.0%} (target >= 95%)"
    )
    ray.shutdown()


if __name__ == "__main__":
    main()
