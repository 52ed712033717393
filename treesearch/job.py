"""One place that assembles a job.

``resolve(cfg) -> Job`` validates a config once, before anything starts: the algorithm and
every option of it, the task and its problems, each backend against the task (model dirs,
tokenizers, PRM formats the vocabulary can express), the verifier's checks. What it loads on
the way (the generator's tokenizer, the PRM's) is kept on the :class:`Job`.

Transports are built from a Job: :func:`local_backends` in this process (deterministic
backends), or replica pools on Ray (``actors.driver``); :func:`engine_scorer` adds what always
runs beside the engine (Monte-Carlo rollouts, the task checks a verifier multiplies in).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from treesearch import verifiers
from treesearch.algorithms import ALGORITHMS, Algorithm
from treesearch.backends import GENERATORS, PRMS, Backend, WorkerEnv, of
from treesearch.backends.hf import PromptTokenizer
from treesearch.budget import Ledger
from treesearch.config import ConfigError, JobConfig
from treesearch.engine import (
    EngineCounters,
    ProblemFeed,
    ProblemResult,
    SearchFn,
    SharedSearchFn,
    run_problems,
)
from treesearch.protocol import Generator, Scorer, TokenCounter
from treesearch.tasks.base import Problem, Task
from treesearch.tasks.registry import make_task


@dataclass
class Job:
    """A validated job.

    Attributes:
      cfg: the resolved config.
      task, problems: what is searched (``run.limit`` applied).
      algorithm, algorithm_config: the search and its typed options.
      generator, prm: the registered backends the config selects.
      tokenizer: the generator's prompt tokenizer (``encode(text) -> ids``), engine side.
      prm_loaded: what the PRM backend's check loaded (its tokenizer), for its token counter.
    """

    cfg: JobConfig
    task: Task
    problems: list[Problem]
    algorithm: Algorithm
    algorithm_config: Any
    generator: Backend
    prm: Backend
    tokenizer: Any
    prm_loaded: Any = None

    def search(self) -> SearchFn:
        run, options = self.algorithm.run, self.algorithm_config

        async def search(ctx: Any) -> int | None:
            return await run(ctx, options)

        return search

    def shared_search(self) -> SharedSearchFn | None:
        """One worker's part of a tree-parallel search, if the algorithm has one."""
        shared, options = self.algorithm.shared, self.algorithm_config
        if shared is None:
            return None

        async def search(ctx: Any, store: Any) -> None:
            await shared(ctx, options, store)

        return search

    async def run(
        self, problems: Sequence[Problem] | ProblemFeed, generator: Generator, scorer: Scorer, **options: Any
    ) -> tuple[list[ProblemResult], Ledger, EngineCounters]:
        """:func:`treesearch.engine.run_problems` with this job's task, search, budget, step cap
        and concurrency; ``options`` add to or override them (``on_result``, ``store``, ...)."""
        cfg = self.cfg
        options.setdefault("concurrency", cfg.run.concurrency)
        options.setdefault("shared_search", self.shared_search())
        return await run_problems(
            problems, self.task, self.search(), generator, scorer, cfg.budget, cfg.generator.max_step_tokens,
            **options,
        )  # fmt: skip

    def counter(self) -> TokenCounter:
        """The PRM's token counter, for a PRM that runs in replicas."""
        if self.prm.counter is None:
            raise ConfigError(f"prm.backend: {self.prm.name} cannot run in replicas")
        return self.prm.counter(self.cfg.prm, self.task, self.prm_loaded)

    def worker_env(self, replica: int = -1, generator: Any = None) -> WorkerEnv:
        return WorkerEnv(
            replica,
            self.cfg.run.seed,
            self.task,
            tuple(self.problems),
            generator,
            self.cfg.generator.max_step_tokens,
        )

    @property
    def verifier(self) -> tuple[str, bool]:
        """``(label, is_oracle)``, e.g. ``("math_shepherd x rule", False)``."""
        return verifiers.describe(self.cfg.prm, self.prm.oracle(self.cfg.prm))


def resolve(cfg: JobConfig) -> Job:
    """Validates ``cfg`` (see module docstring); every failure is a ConfigError naming its field."""
    name = cfg.algorithm.get("name")
    if name not in ALGORITHMS:
        raise ConfigError(f"algorithm.name: {name!r} is not one of {sorted(ALGORITHMS)}")
    algorithm_config = cfg.algorithm_config()
    generator, prm = of(cfg.generator), of(cfg.prm)
    tokenizer = generator.tokenizer(cfg.generator) if generator.tokenizer else None
    task = make_task(cfg, tokenizer.tokenizer if isinstance(tokenizer, PromptTokenizer) else None)
    if generator.check is not None:
        generator.check(cfg.generator, task)
    prm_loaded = prm.check(cfg.prm, task) if prm.check is not None else None
    try:
        verifiers.check_checks(task, cfg.prm.checks)
    except ValueError as e:
        raise ConfigError(f"prm.checks: {e}") from e
    try:  # a missing / empty dataset or a wrong field mapping fails here, before anything starts
        problems = task.problems()
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(f"task: {e}") from e
    if cfg.run.limit is not None:
        problems = problems[: cfg.run.limit]
    if not problems:
        raise ConfigError("task: the selected split holds no problems")
    return Job(cfg, task, problems, ALGORITHMS[name], algorithm_config, generator, prm, tokenizer, prm_loaded)


def local_backends(job: Job) -> tuple[Generator, Scorer]:
    """The job's backends in this process (``--in-process``, search workers that host them)."""
    if not job.generator.in_process:
        local = sorted(n for n, b in GENERATORS.items() if b.in_process)
        raise ConfigError(
            f"generator.backend: {job.generator.name!r} is not an in-process backend ({', '.join(local)})"
        )
    if not (job.prm.in_process or job.prm.engine_side):
        local = sorted(n for n, b in PRMS.items() if b.in_process or b.engine_side)
        raise ConfigError(f"prm.backend: {job.prm.name!r} is not an in-process backend ({', '.join(local)})")
    generator = job.generator.worker(job.cfg.generator, job.worker_env())
    return generator, engine_scorer(job, generator)


def engine_scorer(job: Job, generator: Generator, replicas: Scorer | None = None) -> Scorer:
    """The scorer the engine talks to: the PRM replicas' transport (``replicas``), or the PRM
    in this process, times the task checks the config multiplies in."""
    if replicas is not None:
        scorer = replicas
    elif job.prm.engine_side or job.prm.in_process:
        scorer = job.prm.worker(job.cfg.prm, job.worker_env(generator=generator))
    else:
        raise ConfigError(f"prm.backend: {job.prm.name!r} runs in replicas (Ray), not in this process")
    try:
        return verifiers.compose(scorer, job.task, job.cfg.prm.checks, job.problems)
    except ValueError as e:
        raise ConfigError(f"prm.checks: {e}") from e
