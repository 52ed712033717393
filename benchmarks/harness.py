"""Shared pieces of the orchestration benchmarks: simulated replicas and one timed search run.

``SimGenerator`` is a Ray actor that proposes Game-of-24 steps with the deterministic noisy
oracle and *sleeps* a modelled time per batch, ``a + b * generated tokens`` scaled by the
replica's ``speed`` (heterogeneous clusters), recording how long it was busy.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import ray

from actors.dispatch import ReplicaPool
from actors.prm import PRMActor, PRMSpec
from treesearch.algorithms import ALGORITHMS
from treesearch.backends.deterministic import ByteTokenizer, NoisyOracleGenerator, RulePRM
from treesearch.budget import Budget
from treesearch.config import build
from treesearch.engine import run_problems
from treesearch.protocol import ExpandRequest, ExpandResult, ScoreRequest, ScoreResult
from treesearch.tasks.game24 import Game24

ALGOS = {
    "beam": {"width": 4, "expansions": 4},
    "mcts": {"simulations": 16, "parallel": 4, "expansions": 4},
}


@ray.remote(num_cpus=0)
class SimGenerator:
    def __init__(self, a_s: float, b_s: float, speed: float, replica: int, error_rate: float = 0.5):
        self.impl = NoisyOracleGenerator(error_rate, 0, replica=replica)
        self.a_s, self.b_s, self.speed = a_s, b_s, speed
        self.busy = 0.0

    async def info(self) -> dict:
        return {"num_parameters": self.impl.num_parameters}

    async def generate(self, requests: list[ExpandRequest]) -> list[ExpandResult]:
        t0 = time.perf_counter()
        results = [self.impl.expand(r) for r in requests]
        tokens = sum(r.generated_tokens for r in results)
        if self.a_s or self.b_s:
            await asyncio.sleep((self.a_s + self.b_s * tokens) * self.speed)
        self.busy += time.perf_counter() - t0
        return results

    async def busy_seconds(self) -> float:
        return self.busy


class PoolGenerator:
    """Batched transport: the production ``ReplicaPool`` (affinity, caps) over the replicas."""

    def __init__(self, handles, max_batch: int = 256, max_calls_in_flight: int = 4):
        self.pool = ReplicaPool(handles, lambda h, b: h.generate.remote(b), key=lambda r: r.problem_id,
                                max_batch=max_batch, max_calls_in_flight=max_calls_in_flight)  # fmt: skip
        self.num_parameters = 1.28e6
        self._tok = ByteTokenizer()

    def tokenize(self, text: str) -> list[int]:
        return self._tok.encode(text)

    async def generate(self, requests):
        return await self.pool.submit(requests)


class PoolScorer:
    def __init__(self, handles):
        self.pool = ReplicaPool(handles, lambda h, b: h.score.remote(b), key=lambda r: r.problem_id)
        self.num_parameters = 0.0
        self._rule = RulePRM(Game24())

    def count_tokens(self, request: ScoreRequest) -> int:
        return self._rule.count_tokens(request)

    async def score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        return await self.pool.submit(requests)


def prm_replicas(n: int) -> list:
    return [PRMActor.options(num_cpus=0).remote(PRMSpec("rule"), i) for i in range(n)]


@dataclass
class RunStats:
    expansions: int
    generated_tokens: int
    wall_s: float
    accuracy: float

    @property
    def expansions_per_s(self) -> float:
        return self.expansions / self.wall_s


def timed_run(
    algo: str, n_problems: int, generator, scorer, concurrency: int, lockstep: bool = False
) -> RunStats:
    task = Game24("all")
    problems = task.problems()[:n_problems]
    algorithm = ALGORITHMS[algo]
    cfg = build(algorithm.config, ALGOS[algo], "algorithm")

    async def search(ctx):
        return await algorithm.run(ctx, cfg)

    t0 = time.perf_counter()
    results, job, _ = asyncio.run(
        run_problems(problems, task, search, generator, scorer, Budget(), 40, concurrency, lockstep=lockstep)
    )
    wall = time.perf_counter() - t0
    return RunStats(
        job.generator_calls, job.policy_generated_tokens, wall, sum(r.correct for r in results) / len(results)
    )
