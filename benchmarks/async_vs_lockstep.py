"""Async engine vs a lockstep engine on the same simulated cluster.

Generator replicas sleep ``a + b * tokens`` per batch, scaled by a per-replica speed drawn
from [0.6, 1.4] (a heterogeneous cluster). The lockstep baseline advances every problem one
request at a time and waits for the whole batch (the search-and-learn / OpenR pattern); the
async engine lets each problem continue as soon as its own results arrive. Same problems,
same searches (the trees are identical; only the timing differs). Target: async >= 1.3x.

    .venv/bin/python -m benchmarks.async_vs_lockstep [--replicas 4] [--problems 128] [--smoke]
"""

from __future__ import annotations

import argparse
import random

import ray

from benchmarks.harness import PoolGenerator, PoolScorer, SimGenerator, prm_replicas, timed_run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--replicas", type=int, default=4)
    ap.add_argument("--problems", type=int, default=128)
    ap.add_argument("--a-ms", type=float, default=20.0, help="fixed latency per batch call")
    ap.add_argument("--b-us", type=float, default=20.0, help="latency per generated token")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    n = 16 if args.smoke else args.problems
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    rng = random.Random(0)
    speeds = [rng.uniform(0.6, 1.4) for _ in range(args.replicas)]
    gens = [SimGenerator.remote(args.a_ms / 1e3, args.b_us / 1e6, s, i) for i, s in enumerate(speeds)]
    prm = prm_replicas(1)
    ray.get([h.info.remote() for h in gens + prm])
    print(
        f"replicas {args.replicas}, speeds {[round(s, 2) for s in speeds]}, "
        f"a {args.a_ms} ms, b {args.b_us} us/token"
    )
    print(f"{'algorithm':>9} {'engine':>9} {'expansions':>11} {'wall s':>8} {'expansions/s':>13}")
    ratios = []
    for algo in ("beam", "mcts"):
        runs = {}
        for mode in ("lockstep", "async"):
            # small calls so a step spreads over the replicas, as a real batch would
            st = timed_run(
                algo, n, PoolGenerator(gens, max_batch=8), PoolScorer(prm), n, lockstep=mode == "lockstep"
            )
            runs[mode] = st
            print(f"{algo:>9} {mode:>9} {st.expansions:>11} {st.wall_s:>8.2f} {st.expansions_per_s:>13,.0f}")
        assert runs["async"].expansions == runs["lockstep"].expansions
        ratios.append(runs["async"].expansions_per_s / runs["lockstep"].expansions_per_s)
    print(
        f"ratio: async / lockstep throughput: beam {ratios[0]:.2f}x, mcts {ratios[1]:.2f}x (target >= 1.3x)"
    )
    ray.shutdown()


if __name__ == "__main__":
    main()
