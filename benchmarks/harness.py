"""Shared pieces of the orchestration benchmarks: zero-cost replicas and jobs built for them.

What these benchmarks measure is the orchestration (engine, transports, Ray), so the
replicas must cost next to nothing: ``memo_oracle`` and ``memo_rule`` are the deterministic
Game-of-24 backends with a memo of their answers, so after one warm-up run a replica only
looks its answers up. They are registered here, one file with its registrations as any
backend is (``treesearch.backends.registry``); a replica process imports this module when
it unpickles the config class.
"""

from __future__ import annotations

import asyncio
import pickle
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from actors.replica import ServiceTime, encode_batch
from treesearch.backends.deterministic import (
    ByteCounter,
    ByteTokenizer,
    NoisyOracleConfig,
    NoisyOracleGenerator,
    RuleConfig,
    RulePRM,
    game24_only,
)
from treesearch.backends.registry import GENERATORS, PRMS, Backend, WorkerEnv, register
from treesearch.budget import Ledger
from treesearch.config import load_config
from treesearch.engine import EngineCounters, EngineOptions, run_problems
from treesearch.job import Job, resolve, transports
from treesearch.protocol import ExpandRequest, ExpandResult, ScoreRequest, ScoreResult
from treesearch.schema import section
from treesearch.tasks.game24 import Game24

ALGOS = {
    "beam": "{name: beam, width: 4, expansions: 4}",
    "mcts": "{name: mcts, simulations: 16, parallel: 4, expansions: 4}",
}


class MemoOracle(NoisyOracleGenerator):
    """The noisy oracle, answering a request it has seen from its memo."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.memo: dict[tuple, ExpandResult] = {}

    def expand(self, req: ExpandRequest) -> ExpandResult:
        key = (req.prompt_ids, req.node, req.k, req.nonce)
        out = self.memo.get(key)
        if out is None:
            out = self.memo[key] = super().expand(req)
        return out


class MemoRule(RulePRM):
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.memo: dict[tuple, ScoreResult] = {}

    def score_one(self, req: ScoreRequest) -> ScoreResult:
        key = (req.question, req.chains, req.max_tokens)
        out = self.memo.get(key)
        if out is None:
            out = self.memo[key] = super().score_one(req)
        return out


@section
class MemoOracleConfig(NoisyOracleConfig):
    """``generator: {backend: memo_oracle}``: the noisy oracle with a memo (benchmarks)."""


@section
class MemoRuleConfig(RuleConfig):
    """``prm: {backend: memo_rule}``: the rule PRM with a memo (benchmarks)."""


if "memo_oracle" not in GENERATORS:  # a module imported twice under two names registers once
    register(
        Backend(
            "memo_oracle",
            MemoOracleConfig,
            worker=lambda cfg, env: MemoOracle(
                cfg.error_rate, env.seed, cfg.num_parameters, cfg.latency_s, env.replica
            ),
            check=game24_only,
            tokenizer=lambda cfg: ByteTokenizer(),
            in_process=True,
        )
    )
if "memo_rule" not in PRMS:
    register(
        Backend(
            "memo_rule",
            MemoRuleConfig,
            worker=lambda cfg, env: MemoRule(Game24(), cfg.reachability, cfg.num_parameters, cfg.latency_s),
            check=game24_only,
            counter=lambda cfg, task, loaded: ByteCounter(Game24.step_delimiter),
            in_process=True,
            oracle=lambda cfg: cfg.reachability,
        )
    )


def zero_cost_job(algo: str, problems: int, *overrides: str, replicas: int = 1) -> Job:
    """A Game-of-24 job over the first ``problems`` solvable puzzles on zero-cost backends."""
    return resolve(
        load_config(
            None,
            [
                f"algorithm={ALGOS[algo]}",
                "task.split=all",
                f"run.limit={problems}",
                f"run.concurrency={problems}",
                "generator={backend: memo_oracle, error_rate: 0.5, max_step_tokens: 40, "
                f"resources: {{num_cpus: 0, replicas: {replicas}}}}}",
                "prm={backend: memo_rule, resources: {num_cpus: 0}}",
                *overrides,
            ],
        )
    )


def replica_transports(job: Job, replicas: Any) -> tuple[Any, Any]:
    """The engine's transports to ``replicas`` (``actors.replicas.Replicas``) for ``job``."""
    from actors.replicas import clients

    return transports(job, *clients(job, replicas))


def run_engine(job: Job, generator: Any, scorer: Any, **options: Any) -> tuple[list, Ledger, EngineCounters]:
    """Every problem of ``job`` through one engine in this process (``options``:
    :class:`treesearch.engine.EngineOptions` fields)."""
    options.setdefault("concurrency", job.cfg.run.concurrency)
    return asyncio.run(
        run_problems(job.problems, job.spec(generator), generator, scorer, EngineOptions(**options))
    )


def median_of(runs: int, measure: Callable[[], dict[str, float]]) -> dict[str, float]:
    """Medians over ``runs`` calls of ``measure`` (a dict of figures each)."""
    samples = [measure() for _ in range(runs)]
    return {k: statistics.median(s[k] for s in samples) for k in samples[0]}


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """A plain text table: ``columns`` are (key, header, format spec)."""
    head = "  ".join(f"{h:>{max(len(h), 10)}}" for _, h, _ in columns)
    lines = [head]
    for r in rows:
        lines.append("  ".join(f"{format(r[k], spec):>{max(len(h), 10)}}" for k, h, spec in columns))
    return "\n".join(lines)


__all__ = ["ALGOS", "WorkerEnv", "median_of", "replica_transports", "run_engine", "table", "zero_cost_job"]


# ----------------------------------------------------------------------------- simulated cluster
class _Method:
    """``handle.<method>.remote(payload)`` of one simulated replica."""

    def __init__(self, cluster: Any, pool: str, index: int):
        self.cluster, self.pool, self.index = cluster, pool, index

    def remote(self, payload: bytes) -> Any:
        return self.cluster.serve.remote(self.pool, self.index, payload)


class SimReplica:
    """A replica handle into a :class:`SimCluster`: the pools and workers use it as they use a
    replica actor's handle (``generate`` / ``score``)."""

    def __init__(self, cluster: Any, pool: str, index: int):
        self.generate = self.score = _Method(cluster, pool, index)


class SimCluster:
    """Many simulated replicas in one process (asyncio servers), so 1 to 256 replicas run on
    two cores. A replica is a continuously batching engine: the calls that arrive while it
    runs a step wait, and its next step serves all of them together, taking
    ``max(latency_s, units / rate) x speed`` (one step's latency until the batch saturates the
    replica at ``rate`` units per second); units are samples for a generator, chains for a
    PRM. The answers come from the memoised zero-cost backends. Run it as a Ray actor:
    :func:`sim_cluster_actor`.

    Args:
      pools: ``{name: (replicas, latency_s, rate, speeds)}``; ``generator`` and ``prm``.
    """

    def __init__(self, pools: dict[str, tuple[int, float, float, list[float]]], error_rate: float = 0.5):
        self.pools = pools
        self.oracle = MemoOracle(error_rate, 0)
        self.rule = MemoRule(Game24(), True)
        self.busy = {p: [0.0] * n for p, (n, *_) in pools.items()}  # finished service seconds
        self.since = {p: [0.0] * n for p, (n, *_) in pools.items()}  # start of the step in service
        self.depth = {p: [0] * n for p, (n, *_) in pools.items()}
        self.service = {p: [ServiceTime() for _ in range(n)] for p, (n, *_) in pools.items()}
        self.waiting: dict[tuple[str, int], list[tuple[int, asyncio.Future]]] = {}
        self.running: dict[tuple[str, int], asyncio.Task] = {}  # replicas running steps
        self.started = time.perf_counter()

    async def serve(self, pool: str, index: int, payload: bytes) -> bytes:
        requests, arrived = pickle.loads(payload), time.perf_counter()
        depth = self.depth[pool]
        depth[index] += len(requests)
        try:
            if pool == "generator":
                results: list = [self.oracle.expand(r) for r in requests]
                units = sum(r.k for r in requests)
            else:
                results = [self.rule.score_one(r) for r in requests]
                units = sum(len(r.chains) for r in requests)
            done = asyncio.get_running_loop().create_future()
            self.waiting.setdefault((pool, index), []).append((units, done))
            if (pool, index) not in self.running:
                self.running[(pool, index)] = asyncio.ensure_future(self._steps(pool, index))
            await done
        finally:
            depth[index] -= len(requests)
        took = time.perf_counter() - arrived
        service = self.service[pool][index].answered(self.busy[pool][index], len(requests), took)
        return encode_batch((results, depth[index], service))

    async def _steps(self, pool: str, index: int) -> None:
        """The replica's engine loop: one step serves every call waiting when it starts."""
        _, latency_s, rate, speeds = self.pools[pool]
        queue = self.waiting[(pool, index)]
        try:
            while queue:
                batch = queue[:]
                queue.clear()
                t0 = self.since[pool][index] = time.perf_counter()
                await asyncio.sleep(max(latency_s, sum(u for u, _ in batch) / rate) * speeds[index])
                self.busy[pool][index] += time.perf_counter() - t0
                self.since[pool][index] = 0.0
                for _, done in batch:
                    done.set_result(None)
        finally:
            self.running.pop((pool, index), None)

    async def snapshot(self) -> tuple[float, dict[str, list[float]]]:
        """(seconds since start, busy seconds per replica of each pool, the step in service
        included up to now)."""
        now = time.perf_counter()
        busy = {
            p: [b + (now - s if s else 0.0) for b, s in zip(bs, self.since[p], strict=True)]
            for p, bs in self.busy.items()
        }
        return now - self.started, busy

    async def ready(self) -> bool:
        return True


def sim_cluster_actor() -> Any:
    """:class:`SimCluster` as a Ray actor class (made here: importing this module needs no Ray)."""
    import ray

    # every simulated replica holds its calls for a whole step: Ray's default of 1,000 calls at
    # once in an async actor would cap 1,024 replicas at ~1 call each
    return ray.remote(num_cpus=0, max_concurrency=100_000)(SimCluster)
