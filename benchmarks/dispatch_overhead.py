"""Dispatch overhead: tree nodes per second of the batched engine vs a naive engine that sends
one actor call per request (generation or scoring), awaited one after another; same Ray, same
run, same searches.

Zero-cost replicas (:mod:`benchmarks.harness`: memoised answers), so what is measured is
orchestration: Ray calls, serialisation, the engine. Beam search and MCTS over 500 Game-of-24
problems. Target: batched >= 10x naive.

    .venv/bin/python -m benchmarks.dispatch_overhead [--problems 500] [--smoke]
"""

from __future__ import annotations

import argparse
import pickle
import time

import ray

from actors.clients import GeneratorClient, ScorerClient
from actors.plane import ray_plane
from actors.replica import encode_batch
from benchmarks.harness import run_engine, table, zero_cost_job
from treesearch.job import transports


async def one_by_one(method, requests: list) -> list:
    """One actor call per request, each awaited before the next (no batching)."""
    out = []
    for r in requests:
        results, *_ = pickle.loads(await method.remote(encode_batch([r])))
        out.append(results[0])
    return out


class NaiveGenerator:
    def __init__(self, client: GeneratorClient):
        self.handle, self.num_parameters, self.tokenize = (
            client.router.handles[0],
            client.num_parameters,
            client.tokenize,
        )

    async def generate(self, requests):
        return await one_by_one(self.handle.generate, requests)


class NaiveScorer:
    def __init__(self, client: ScorerClient):
        self.handle, self.num_parameters, self.counter = (
            client.router.handles[0],
            client.num_parameters,
            client.counter,
        )

    async def score(self, requests):
        return await one_by_one(self.handle.score, requests)


def run(job, generator, scorer) -> dict[str, float]:
    generator, scorer = transports(job, generator, scorer)
    t0 = time.perf_counter()
    _, ledger, _ = run_engine(job, generator, scorer, concurrency=len(job.problems))
    wall = time.perf_counter() - t0
    return {
        "nodes": ledger.nodes,
        "wall": wall,
        "nodes_per_s": ledger.nodes / wall,
        "calls": ledger.generator_calls,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", type=int, default=500)
    ap.add_argument("--smoke", action="store_true", help="20 problems: checks the script works")
    args = ap.parse_args()
    n = 20 if args.smoke else args.problems
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    plane = ray_plane(zero_cost_job("beam", n))
    rows, ratios = [], []
    with plane as p:
        for algo in ("beam", "mcts"):
            job = zero_cost_job(algo, n)
            run(job, p.generator, p.scorer)  # warm-up: the replicas' memos
            batched = run(job, p.generator, p.scorer)
            naive = run(job, NaiveGenerator(p.generator), NaiveScorer(p.scorer))
            assert batched["nodes"] == naive["nodes"]  # the same searches
            rows += [
                {"algorithm": algo, "engine": "batched", **batched},
                {"algorithm": algo, "engine": "naive", **naive},
            ]
            ratios.append(batched["nodes_per_s"] / naive["nodes_per_s"])
    ray.shutdown()
    print(
        table(
            rows,
            [
                ("algorithm", "algorithm", ""),
                ("engine", "engine", ""),
                ("nodes", "nodes", ",.0f"),
                ("wall", "wall s", ".2f"),
                ("nodes_per_s", "nodes/s", ",.0f"),
            ],
        )
    )
    print(
        f"ratio: batched / naive nodes per second: beam {ratios[0]:.1f}x, mcts {ratios[1]:.1f}x "
        "(target >= 10x)"
    )


if __name__ == "__main__":
    main()
