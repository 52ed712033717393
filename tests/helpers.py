"""Shared test helpers: run an in-process job and read its trees back."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from treesearch.algorithms import ALGORITHMS
from treesearch.backends import WorkerEnv, backend_of, parse_section
from treesearch.backends.deterministic import NoisyOracleGenerator, RulePRM
from treesearch.budget import Budget
from treesearch.engine import EngineOptions, make_spec, run_problems
from treesearch.job import resolve
from treesearch.plane import LocalPlane
from treesearch.results import FailureLimit
from treesearch.schema import build
from treesearch.sections import GeneratorConfig, PRMConfig
from treesearch.tasks.game24 import Game24

ALGO_PARAMS = {
    "best_of_n": {"n": 64, "wave": 4},
    "beam": {"width": 3, "expansions": 3},
    "dvts": {"n_subtrees": 3, "expansions": 3},
    "tot_bfs": {"breadth": 3, "samples": 5},
    "tot_dfs": {"samples": 4},
    "mcts": {"simulations": 24, "parallel": 3, "expansions": 3},
    "adaptive": {},
}


async def run_search(
    problems, task, search, generator, scorer, budget, max_step_tokens, *, concurrency=64, on_result=None,
    max_failures=None, lockstep=False, shared_search=None,
):  # fmt: skip
    """:func:`treesearch.engine.run_problems` with a spec made of these parts."""
    spec = make_spec(task, search, generator, budget, max_step_tokens, shared_search)
    options = EngineOptions(concurrency=concurrency, lockstep=lockstep)
    failures = FailureLimit(max_failures) if max_failures is not None else None
    return await run_problems(problems, spec, generator, scorer, options, on_result, failures)


def run_inprocess(
    algorithm: str,
    params: dict | None = None,
    budget: Budget | None = None,
    n_problems: int = 6,
    seed: int = 0,
    error_rate: float = 0.5,
    concurrency: int = 64,
    generator=None,
    scorer=None,
    problems: Sequence | None = None,
    task=None,
    max_failures: int | None = None,
):
    task = task or Game24("dev")
    algo = ALGORITHMS[algorithm]
    cfg = build(algo.config, params if params is not None else ALGO_PARAMS[algorithm], "algorithm")
    trees = {}

    async def search(ctx):
        return await algo.run(ctx, cfg)

    results, job, counters = asyncio.run(
        run_search(
            problems if problems is not None else task.problems()[:n_problems],
            task,
            search,
            generator or NoisyOracleGenerator(error_rate, seed),
            scorer or RulePRM(task),
            budget or Budget(generated_tokens=1500, early_stop="never"),  # the algorithm's own stop
            max_step_tokens=40,
            concurrency=concurrency,
            on_result=lambda r, t: trees.__setitem__(r.id, t),
            max_failures=max_failures,
        )
    )
    return results, job, counters, trees


def run_local(cfg, out: Path, **kwargs):
    """``treesearch run --in-process`` of a loaded config into ``out`` (its summary), quiet."""
    from treesearch.runner import run_job

    kwargs.setdefault("progress", False)
    return run_job(resolve(cfg), out, LocalPlane(), **kwargs)


def backend_worker(section: str, replica: int = -1, **fields):
    """The worker a ``generator:`` / ``prm:`` section with ``fields`` selects, built here."""
    part = parse_section(GeneratorConfig if section == "generator" else PRMConfig, fields, section)
    return backend_of(part).worker(part, WorkerEnv(replica=replica))


def slow_run(config: str, out: Path, limit: int, latency_s: float) -> subprocess.Popen:
    """A run in another process (in-process backends, one problem at a time, each generator call
    ``latency_s`` long), started once a first problem has finished; for tests that watch a
    running job."""
    run = subprocess.Popen(
        [sys.executable, "-m", "treesearch.cli", "run", config, "--in-process", "--quiet",
         "--limit", str(limit), "--out", str(out),
         "--set", "run.concurrency=1", "--set", f"generator.latency_s={latency_s}"],
    )  # fmt: skip
    results = out / "results.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (results.is_file() and results.read_text().strip()):
        time.sleep(0.05)
    return run
