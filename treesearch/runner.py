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
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from treesearch import verifiers
from treesearch.algorithms import ALGORITHMS
from treesearch.backends.deterministic import NoisyOracleGenerator, RulePRM
from treesearch.backends.mc_rollout import MonteCarloRolloutPRM
from treesearch.budget import Ledger
from treesearch.config import ConfigError, JobConfig
from treesearch.engine import ProblemResult, run_problems
from treesearch.protocol import Generator, Scorer
from treesearch.rundir import RunDir
from treesearch.tasks.base import Problem, Task
from treesearch.tasks.game24 import Game24
from treesearch.tree import Tree


def _math_task(cfg: JobConfig) -> Task:
    from treesearch.tasks.math import MathTask

    t = cfg.task
    if not t.path:
        raise ConfigError("task.path: the math task needs a dataset file")
    if not cfg.generator.model:
        raise ConfigError("generator.model: the math task builds prompts with the policy's chat template")
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(cfg.generator.model)
    except (OSError, ValueError) as e:
        raise ConfigError(f"generator.model: cannot load its tokenizer: {str(e).splitlines()[0]}") from e
    fields = {k: v for k, v in t.fields.items()}
    unknown = set(fields) - {"question", "answer", "id"}
    if unknown:
        raise ConfigError(f"task.fields: unknown role(s) {sorted(unknown)} (roles: question, answer, id)")
    return MathTask(
        t.path,
        tokenizer,
        fields,
        t.system_prompt,
        t.delimiter,
        t.max_steps,
        t.answer_pattern,
        t.chat_template,
    )


TASKS: dict[str, Callable[[JobConfig], Task]] = {
    "game24": lambda cfg: Game24(cfg.task.split, cfg.task.integer_only, cfg.task.csv_path),
    "math": _math_task,
}


def make_task(cfg: JobConfig) -> Task:
    if cfg.task.name not in TASKS:
        raise ConfigError(f"task.name: {cfg.task.name!r} is not one of {sorted(TASKS)}")
    try:
        return TASKS[cfg.task.name](cfg)
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
    cfg: JobConfig, rows: list[dict[str, Any]], wall_seconds: float, extra: dict[str, Any]
) -> dict[str, Any]:
    """Totals over finished problems (``results.jsonl`` rows): every session of a resumed run."""
    n = len(rows)
    job = Ledger()
    for r in rows:
        job.add(Ledger.from_dict(r["ledger"]))
    job.wall_seconds = wall_seconds
    verifier, oracle = verifiers.describe(cfg.prm.backend, cfg.prm.checks, cfg.prm.reachability)
    return {
        "n_problems": n,
        "accuracy": sum(r["correct"] for r in rows) / n if n else 0.0,
        "coverage": sum(r["covered"] for r in rows) / n if n else 0.0,
        "algorithm": cfg.algorithm["name"],
        "task": cfg.task.name,
        "split": cfg.task.split,
        "seed": cfg.run.seed,
        "budget": {k: v for k, v in dataclasses.asdict(cfg.budget).items() if v is not None},
        "verifier": verifier,
        "oracle_verifier": oracle,
        "mean_nodes": sum(r["nodes"] for r in rows) / n if n else 0.0,
        "ledger": job.to_dict(),
        **extra,
    }


class Progress:
    """One status line on stderr, rewritten as problems finish: done, accuracy, tokens/s."""

    def __init__(self, total: int, stream: TextIO = sys.stderr, done: int = 0):
        self.total, self.stream = total, stream
        self.done, self.correct, self.tokens = done, 0, 0
        self.new = 0
        self.started = time.perf_counter()
        self.tty = stream.isatty()

    def update(self, result: ProblemResult) -> None:
        self.done += 1
        self.new += 1
        self.correct += result.correct
        self.tokens += result.ledger.policy_generated_tokens
        if self.tty or self.done == self.total or self.done % max(1, self.total // 10) == 0:
            dt = max(1e-9, time.perf_counter() - self.started)
            line = (
                f"[{self.done}/{self.total}] accuracy {self.correct / self.new:.1%}"
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
    resume: bool = False,
) -> dict[str, Any]:
    """Runs ``cfg`` (in-process backends unless given) into ``out``; returns the summary.

    With ``resume``, problems already in ``out/results.jsonl`` are skipped (see
    :mod:`treesearch.rundir`).
    """
    task = make_task(cfg)
    algo = ALGORITHMS[cfg.algorithm["name"]]
    algo_cfg = cfg.algorithm_config()
    try:
        problems = select_problems(task, cfg.run.limit)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(f"task: {e}") from e
    if not problems:
        raise ConfigError("task: the selected split holds no problems")
    if generator is None:
        generator, scorer = make_local_backends(cfg, task, problems)
    elif scorer is None and cfg.prm.backend == "mc_rollout":
        scorer = mc_rollout_prm(cfg, generator, task, problems)
    if scorer is None:
        raise ValueError("run_job: a generator was given without a scorer")
    try:
        scorer = verifiers.compose(scorer, task, cfg.prm.checks, problems)
    except ValueError as e:
        raise ConfigError(f"prm.checks: {e}") from e
    rundir = RunDir(out, cfg, resume)
    todo = [p for p in problems if p.id not in rundir.finished]
    bar = Progress(len(problems), done=len(problems) - len(todo)) if progress else None

    def on_result(result: ProblemResult, tree: Tree) -> None:
        rundir.problem_done(result.to_json(), tree.to_msgpack())
        if bar is not None:
            bar.update(result)

    async def search(ctx):
        return await algo.run(ctx, algo_cfg)

    started = time.perf_counter()
    counters: dict[str, int] = {}
    if todo:
        _, _, counters = asyncio.run(
            run_problems(
                todo,
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
    session = time.perf_counter() - started
    ids = {p.id for p in problems}
    rows = [r for pid, r in rundir.finished.items() if pid in ids]
    extra = {**counters, "sessions": len(rundir.meta["sessions"]), "config_hash": rundir.hash}
    summary = summarize(cfg, rows, rundir.wall_seconds + session, extra)
    rundir.finish(summary, session)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """A compact table of a run's summary."""
    led = summary["ledger"]
    rows = [
        ("algorithm", summary["algorithm"]),
        ("verifier", summary.get("verifier", "?")),
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
