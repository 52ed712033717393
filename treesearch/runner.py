"""Runs a job config in-process and writes the output directory.

Output dir contract (later layers and users rely on it):
  config.yaml      the resolved config
  results.jsonl    one line per problem, appended and flushed as each finishes:
                   id, answer, correct, covered, nodes, ledger (+ answer_node, answer_score)
  summary.json     n_problems, accuracy, coverage, algorithm, ledger (job totals), ...
  trees/<id>.msgpack   each problem's search tree (``Tree.from_msgpack``)
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import yaml

from treesearch.algorithms import ALGORITHMS
from treesearch.backends.deterministic import NoisyOracleGenerator, RulePRM
from treesearch.backends.mc_rollout import MonteCarloRolloutPRM
from treesearch.budget import Ledger
from treesearch.config import ConfigError, JobConfig
from treesearch.engine import ProblemResult, run_problems
from treesearch.protocol import Generator, Scorer
from treesearch.tasks.base import Problem, Task
from treesearch.tasks.game24 import Game24
from treesearch.tree import Tree

TASKS: dict[str, Callable[[Any], Task]] = {
    "game24": lambda c: Game24(c.split, c.integer_only, c.csv_path),
}


def make_task(cfg: JobConfig) -> Task:
    if cfg.task.name not in TASKS:
        raise ConfigError(f"task.name: {cfg.task.name!r} is not one of {sorted(TASKS)}")
    try:
        return TASKS[cfg.task.name](cfg.task)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(f"task: {e}") from e


def make_local_backends(cfg: JobConfig, task: Task, problems: list[Problem]) -> tuple[Generator, Scorer]:
    """In-process deterministic backends. Model-backed ones run on Ray (``actors.driver``)."""
    g, p = cfg.generator, cfg.prm
    if g.backend != "noisy_oracle":
        raise ConfigError(f"generator.backend: {g.backend!r} is not an in-process backend (noisy_oracle)")
    if p.backend not in ("rule", "mc_rollout"):
        raise ConfigError(f"prm.backend: {p.backend!r} is not an in-process backend (rule, mc_rollout)")
    if not isinstance(task, Game24):
        raise ConfigError("generator.backend: noisy_oracle and the rule PRM support task game24 only")
    try:
        gen = NoisyOracleGenerator(g.error_rate, cfg.run.seed, g.num_parameters, g.latency_s)
    except ValueError as e:
        raise ConfigError(f"generator: {e}") from e
    if p.backend == "mc_rollout":
        return gen, mc_rollout_prm(cfg, gen, task, problems)
    return gen, RulePRM(task, p.reachability, p.num_parameters)


def mc_rollout_prm(cfg: JobConfig, generator: Generator, task: Task, problems: list[Problem]) -> Scorer:
    try:
        return MonteCarloRolloutPRM(
            generator, task, problems, cfg.prm.rollouts, cfg.generator.max_step_tokens
        )
    except ValueError as e:
        raise ConfigError(f"prm: {e}") from e


def select_problems(task: Task, limit: int | None) -> list[Problem]:
    problems = task.problems()
    return problems[:limit] if limit is not None else problems


def summarize(
    cfg: JobConfig, results: list[ProblemResult], job: Ledger, extra: dict[str, Any]
) -> dict[str, Any]:
    n = len(results)
    return {
        "n_problems": n,
        "accuracy": sum(r.correct for r in results) / n if n else 0.0,
        "coverage": sum(r.covered for r in results) / n if n else 0.0,
        "algorithm": cfg.algorithm["name"],
        "task": cfg.task.name,
        "split": cfg.task.split,
        "seed": cfg.run.seed,
        "budget": {k: v for k, v in dataclasses.asdict(cfg.budget).items() if v is not None},
        "mean_nodes": sum(r.nodes for r in results) / n if n else 0.0,
        "ledger": job.to_dict(),
        **extra,
    }


class RunWriter:
    """Streams a run's outputs into ``out`` as problems finish."""

    def __init__(self, out: Path, cfg: JobConfig):
        self.out, self.save_trees = out, cfg.run.save_trees
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        if self.save_trees:
            (out / "trees").mkdir(exist_ok=True)
        self._results: TextIO = (out / "results.jsonl").open("w")

    def problem_done(self, result: ProblemResult, tree: Tree) -> None:
        if self.save_trees:
            (self.out / "trees" / f"{result.id}.msgpack").write_bytes(tree.to_msgpack())
        self._results.write(json.dumps(result.to_json()) + "\n")
        self._results.flush()

    def finish(self, summary: dict[str, Any]) -> None:
        self._results.close()
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


class Progress:
    """One status line on stderr, rewritten as problems finish: done, accuracy, tokens/s."""

    def __init__(self, total: int, stream: TextIO = sys.stderr):
        self.total, self.stream = total, stream
        self.done = self.correct = self.tokens = 0
        self.started = time.perf_counter()
        self.tty = stream.isatty()

    def update(self, result: ProblemResult) -> None:
        self.done += 1
        self.correct += result.correct
        self.tokens += result.ledger.policy_generated_tokens
        if self.tty or self.done == self.total or self.done % max(1, self.total // 10) == 0:
            dt = max(1e-9, time.perf_counter() - self.started)
            line = (
                f"[{self.done}/{self.total}] accuracy {self.correct / self.done:.1%}"
                f"  {self.tokens / dt:,.0f} generated tok/s"
            )
            self.stream.write(("\r" + line) if self.tty else line + "\n")
            if self.tty and self.done == self.total:
                self.stream.write("\n")
            self.stream.flush()


def run_job(
    cfg: JobConfig,
    out: Path,
    generator: Generator | None = None,
    scorer: Scorer | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Runs ``cfg`` (in-process backends unless given) and writes ``out``; returns the summary."""
    task = make_task(cfg)
    algo = ALGORITHMS[cfg.algorithm["name"]]
    algo_cfg = cfg.algorithm_config()
    problems = select_problems(task, cfg.run.limit)
    if not problems:
        raise ConfigError("task: the selected split holds no problems")
    if generator is None:
        generator, scorer = make_local_backends(cfg, task, problems)
    elif scorer is None and cfg.prm.backend == "mc_rollout":
        scorer = mc_rollout_prm(cfg, generator, task, problems)
    if scorer is None:
        raise ValueError("run_job: a generator was given without a scorer")
    writer = RunWriter(out, cfg)
    bar = Progress(len(problems)) if progress else None

    def on_result(result: ProblemResult, tree: Tree) -> None:
        writer.problem_done(result, tree)
        if bar is not None:
            bar.update(result)

    async def search(ctx):
        return await algo.run(ctx, algo_cfg)

    results, job, counters = asyncio.run(
        run_problems(
            problems,
            task,
            search,
            generator,
            scorer,
            cfg.budget,
            cfg.generator.max_step_tokens,
            cfg.run.concurrency,
            on_result,
        )
    )
    summary = summarize(cfg, results, job, counters)
    writer.finish(summary)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """A compact table of a run's summary."""
    led = summary["ledger"]
    rows = [
        ("algorithm", summary["algorithm"]),
        ("problems", summary["n_problems"]),
        ("accuracy", f"{summary['accuracy']:.1%}"),
        ("coverage", f"{summary['coverage']:.1%}"),
        ("selection gap", f"{summary['coverage'] - summary['accuracy']:.1%}"),
        ("mean nodes / problem", f"{summary['mean_nodes']:.1f}"),
        ("policy generated tokens", f"{led['policy_generated_tokens']:,}"),
        (
            "policy prompt tokens (cached)",
            f"{led['policy_prompt_tokens']:,} ({led['policy_cached_prompt_tokens']:,})",
        ),
        ("prm tokens", f"{led['prm_tokens']:,}"),
        ("generator / prm calls", f"{led['generator_calls']:,} / {led['prm_calls']:,}"),
        ("FLOPs", f"{led['flops']:.3g}"),
        ("wall seconds", f"{led['wall_seconds']:.2f}"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
