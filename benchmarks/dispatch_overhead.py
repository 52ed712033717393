"""Dispatch overhead: node expansions per second of the batched engine vs a naive engine that
sends one actor call per node expansion (and per PRM score), same Ray, same run.

Zero-latency deterministic backends (noisy-oracle generator actor, rule PRM actor), so what is
measured is orchestration: Ray calls, serialisation, the engine. Beam search and MCTS over
>= 500 Game-of-24 problems. Target: batched >= 10x naive.

    .venv/bin/python -m benchmarks.dispatch_overhead [--problems 500] [--smoke]
"""

from __future__ import annotations

import argparse

import ray

from benchmarks.harness import PoolGenerator, PoolScorer, SimGenerator, prm_replicas, timed_run


class NaiveGenerator(PoolGenerator):
    """One actor call per expansion request, awaited one after another."""

    async def generate(self, requests):
        h = self.pool.handles[0]
        return [(await h.generate.remote([r]))[0] for r in requests]


class NaiveScorer(PoolScorer):
    async def score(self, requests):
        h = self.pool.handles[0]
        return [(await h.score.remote([r]))[0] for r in requests]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", type=int, default=500)
    ap.add_argument("--smoke", action="store_true", help="20 problems: checks the script works")
    args = ap.parse_args()
    n = 20 if args.smoke else args.problems
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    gen, prm = [SimGenerator.remote(0.0, 0.0, 1.0, 0)], prm_replicas(1)
    ray.get([h.info.remote() for h in gen + prm])
    print(f"{'algorithm':>9} {'engine':>8} {'expansions':>11} {'wall s':>8} {'expansions/s':>13}")
    ratios = []
    for algo in ("beam", "mcts"):  # warm-up: the backends' memoised move tables, Ray workers
        timed_run(algo, n, PoolGenerator(gen), PoolScorer(prm), concurrency=n)
    for algo in ("beam", "mcts"):
        stats = {}
        for name, g, s in (
            ("batched", PoolGenerator(gen), PoolScorer(prm)),
            ("naive", NaiveGenerator(gen), NaiveScorer(prm)),
        ):
            st = timed_run(algo, n, g, s, concurrency=n)
            stats[name] = st
            print(f"{algo:>9} {name:>8} {st.expansions:>11} {st.wall_s:>8.2f} {st.expansions_per_s:>13,.0f}")
        assert stats["batched"].expansions == stats["naive"].expansions  # same searches
        ratios.append(stats["batched"].expansions_per_s / stats["naive"].expansions_per_s)
    print(
        f"ratio: batched / naive expansions per second: beam {ratios[0]:.1f}x, "
        f"mcts {ratios[1]:.1f}x (target >= 10x)"
    )
    ray.shutdown()


if __name__ == "__main__":
    main()
