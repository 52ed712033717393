"""Runs a job into its run dir: the one writer of ``results.jsonl``, trees and ``summary.json``.

Output dir contract (later layers and users rely on it; see :mod:`treesearch.rundir`):
  config.yaml      the resolved config
  results.jsonl    one line per problem, appended and flushed as each finishes:
                   id, status, answer, correct, covered, nodes, ledger (+ answer_node,
                   answer_score; failed problems: error)
  summary.json     n_problems, failed, accuracy, coverage, algorithm, ledger (job totals), ...
  trees/<id>.msgpack   each problem's search tree (``Tree.from_msgpack``)

Where the searches run is a :class:`SearchPlane`: the engine in this process
(:class:`LocalPlane`) or search workers on Ray (``actors.fleet``). Either streams finished
problems back as ``(row, tree bytes)``; the run dir, the progress line and the summary are
written here and nowhere else.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from treesearch.budget import BUDGET_UNITS, Ledger
from treesearch.config import ConfigError, JobConfig
from treesearch.engine import FAILED, ProblemResult
from treesearch.job import Job, engine_scorer, local_backends, resolve
from treesearch.progress import Progress
from treesearch.protocol import Generator, Scorer
from treesearch.rundir import RunDir
from treesearch.tasks.base import Problem
from treesearch.tree import Tree

# (results row, tree msgpack bytes or None)
OnResult = Callable[[dict[str, Any], bytes | None], None]


class SearchPlane(Protocol):
    """Where a job's searches run; streams each finished problem to ``on_result``."""

    async def run(
        self, problems: Sequence[Problem], on_result: OnResult, max_failures: int
    ) -> dict[str, Any]:
        """Searches every problem once; returns counters for the summary."""
        ...


class LocalPlane:
    """The engine in this process, over the given transports."""

    def __init__(self, job: Job, generator: Generator, scorer: Scorer, save_trees: bool = True):
        self.job, self.generator, self.scorer, self.save_trees = job, generator, scorer, save_trees

    async def run(
        self, problems: Sequence[Problem], on_result: OnResult, max_failures: int
    ) -> dict[str, Any]:
        def done(result: ProblemResult, tree: Tree) -> None:
            on_result(result.to_json(), tree.to_msgpack() if self.save_trees else None)

        _, _, counters = await self.job.run(
            list(problems), self.generator, self.scorer, on_result=done, max_failures=max_failures
        )
        return counters.to_dict()


def max_failures(cfg: JobConfig, n_problems: int) -> int:
    """Failed problems a job tolerates before it stops (``run.max_failed_fraction``, >= 2)."""
    return max(2, int(cfg.run.max_failed_fraction * n_problems))


def summarize(
    job: Job, rows: Iterable[dict[str, Any]], wall_seconds: float, extra: dict[str, Any]
) -> dict[str, Any]:
    """Totals over finished problems (``results.jsonl`` rows, streamed): every session of a
    resumed run. Failed problems are counted apart and left out of accuracy and coverage;
    their compute is in the ledger (it was spent)."""
    cfg = job.cfg
    total = Ledger()
    n = correct = covered = nodes = 0
    failed_ids: list[str] = []
    for r in rows:
        total.add(Ledger.from_dict(r["ledger"]))
        if r.get("status", "ok") == FAILED:
            failed_ids.append(r["id"])
            continue
        n += 1
        correct += r["correct"]
        covered += r["covered"]
        nodes += r["nodes"]
    total.wall_seconds = wall_seconds
    verifier, oracle = job.verifier
    return {
        "n_problems": n,
        "failed": len(failed_ids),
        "failed_ids": sorted(failed_ids)[:100],
        "accuracy": correct / n if n else 0.0,
        "coverage": covered / n if n else 0.0,
        "algorithm": cfg.algorithm["name"],
        "task": cfg.task.name,
        "split": cfg.task.split,
        "seed": cfg.run.seed,
        "budget": {k: v for k, v in dataclasses.asdict(cfg.budget).items() if v is not None},
        "verifier": verifier,
        "oracle_verifier": oracle,
        "mean_nodes": nodes / n if n else 0.0,
        "ledger": total.to_dict(),
        **extra,
    }


def run_job(
    cfg: JobConfig | Job,
    out: Path,
    generator: Generator | None = None,
    scorer: Scorer | None = None,
    progress: bool = True,
    resume: bool = False,
    retry_failed: bool = False,
    plane: SearchPlane | None = None,
    extra: Callable[[], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Runs a job into ``out``; returns the summary.

    The searches run on ``plane`` if given, else in this process over ``generator`` /
    ``scorer`` (replica transports), else over the job's in-process backends. With ``resume``,
    problems already in ``out/results.jsonl`` are skipped (see :mod:`treesearch.rundir`);
    ``retry_failed`` re-runs the ones that failed and nothing else. ``extra()`` adds figures
    known once the searches are done (e.g. dispatch counters) to the summary.
    """
    job = cfg if isinstance(cfg, Job) else resolve(cfg)
    if plane is None:
        if generator is None:
            generator, scorer = local_backends(job)
        else:
            scorer = engine_scorer(job, generator, scorer)
        plane = LocalPlane(job, generator, scorer, job.cfg.run.save_trees)
    rundir = RunDir(out, job.cfg, resume or retry_failed)
    if retry_failed:
        todo = [p for p in job.problems if rundir.finished.get(p.id) == FAILED]
    else:
        todo = [p for p in job.problems if p.id not in rundir.finished]
    # status.json is written even when quiet: `treesearch status` reads it
    bar = Progress(len(job.problems), len(job.problems) - len(todo), sys.stderr if progress else None,
                   rundir.out / "status.json")  # fmt: skip

    def on_result(row: dict[str, Any], tree: bytes | None) -> None:
        rundir.problem_done(row, tree)
        bar.update(row)

    started = time.perf_counter()
    counters: dict[str, Any] = {}
    if todo:
        counters = asyncio.run(plane.run(todo, on_result, max_failures(job.cfg, len(job.problems))))
    session = time.perf_counter() - started
    rows = rundir.rows({p.id for p in job.problems})
    meta = {
        **counters,
        **(extra() if extra else {}),
        "sessions": len(rundir.meta["sessions"]),
        "config_hash": rundir.hash,
    }
    summary = summarize(job, rows, rundir.wall_seconds + session, meta)
    rundir.finish(summary, session)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """A compact table of a run's summary."""
    led = summary["ledger"]
    rows = [
        ("algorithm", summary["algorithm"]),
        ("verifier", summary.get("verifier", "?")),
        ("problems", summary["n_problems"]),
    ]
    if summary.get("failed"):
        rows.append(
            ("failed (not in accuracy)", f"{summary['failed']}: {', '.join(summary['failed_ids'][:5])}")
        )
    rows += [
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
    ]
    if led.get("early_stops"):
        unit = next((u for u in summary.get("budget", {}) if u in BUDGET_UNITS and u != "seconds"), "budget")
        rows.append(
            ("stopped early (returned)", f"{led['early_stops']:,} ({led['budget_returned']:,.0f} {unit})")
        )
    rows += [
        ("FLOPs", f"{led['flops']:.3g}"),
        ("wall seconds", f"{led['wall_seconds']:.2f}"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


__all__ = ["ConfigError", "LocalPlane", "SearchPlane", "format_summary", "run_job", "summarize"]
