"""Runs a job into its run dir: the one writer of ``results.jsonl``, trees and ``summary.json``.

Output dir contract (later layers and users rely on it; see :mod:`treesearch.rundir`):
  config.yaml      the resolved config
  results.jsonl    one line per problem, appended and flushed as each finishes:
                   id, status, answer, correct, covered, nodes, ledger (+ answer_node,
                   answer_score; failed problems: error)
  summary.json     n_problems, failed, accuracy, coverage, algorithm, ledger (job totals), ...
  trees/<id>.msgpack   each problem's search tree (``Tree.from_msgpack``)

Where the searches run is a :class:`~treesearch.plane.Plane`, started by the caller; it
streams finished problems back as ``(row, tree bytes)``, and the run dir, the progress line
and the summary are written here and nowhere else. Nothing here knows of Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from treesearch.budget import BUDGET_UNITS, Ledger
from treesearch.errors import ConfigError
from treesearch.job import Job
from treesearch.plane import Plane
from treesearch.progress import Progress, ticking
from treesearch.results import FAILED, FailureLimit
from treesearch.rundir import RunDir
from treesearch.safeio import iter_rows
from treesearch.storage import is_uri, read_text


def tally(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Totals over finished problems (``results.jsonl`` rows, streamed). Failed problems are
    counted apart and left out of accuracy and coverage; their compute is in the ledger (it
    was spent)."""
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
    return {
        "n_problems": n,
        "failed": len(failed_ids),
        "failed_ids": sorted(failed_ids)[:100],
        "accuracy": correct / n if n else 0.0,
        "coverage": covered / n if n else 0.0,
        "mean_nodes": nodes / n if n else 0.0,
        "ledger": total.to_dict(),
    }


def summarize(
    job: Job, rows: Iterable[dict[str, Any]], wall_seconds: float, extra: dict[str, Any]
) -> dict[str, Any]:
    """:func:`tally` of every session's rows of a (resumed) run, with what the job was."""
    cfg = job.cfg
    totals = tally(rows)
    totals["ledger"]["wall_seconds"] = wall_seconds
    verifier, oracle = job.verifier
    return {
        **totals,
        "algorithm": job.algorithm.name,
        "task": cfg.task.name,
        "split": cfg.task.split,
        "seed": cfg.run.seed,
        "budget": {k: v for k, v in dataclasses.asdict(cfg.budget).items() if v is not None},
        "verifier": verifier,
        "oracle_verifier": oracle,
        **extra,
    }


def run_job(
    job: Job, out: Path, plane: Plane, progress: bool = True, resume: bool = False, retry_failed: bool = False
) -> dict[str, Any]:
    """Runs ``job`` on ``plane`` into ``out``; returns the summary.

    With ``resume``, problems already in ``out/results.jsonl`` are skipped (see
    :mod:`treesearch.rundir`); ``retry_failed`` re-runs the ones that failed and nothing else.
    """
    rundir = RunDir(out, job, resume or retry_failed)
    if retry_failed:
        todo = [p for p in job.problems if rundir.finished.get(p.id) == FAILED]
    else:
        todo = [p for p in job.problems if p.id not in rundir.finished]
    # status.json is written even when quiet: `treesearch status` reads it
    bar = Progress(len(job.problems), len(job.problems) - len(todo), sys.stderr if progress else None,
                   rundir.out / "status.json", load=plane.load)  # fmt: skip

    def on_row(row: dict[str, Any], tree: bytes | None) -> None:
        rundir.problem_done(row, tree)
        bar.update(row)

    started = time.perf_counter()
    counters: dict[str, Any] = {}
    if todo:
        failures = FailureLimit.of(job.cfg.run.max_failed_fraction, len(job.problems))
        counters = asyncio.run(ticking(plane.run(job, todo, on_row, failures), bar))
    session = time.perf_counter() - started
    rows = rundir.rows({p.id for p in job.problems})
    meta = {**counters, "sessions": len(rundir.meta["sessions"]), "config_hash": rundir.hash}
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


RUN_FILES = "config.yaml, run.json, results.jsonl, summary.json, status.json, trees/<id>.msgpack"


def results_text(out: str, state: str) -> str:
    """What ``treesearch results`` prints for the run at ``out`` (a path or URI) whose job is in
    ``state`` (a cluster job's state, or a local run's ``status.json`` state). A finished run
    shows its summary; a running (or failed) one a **partial** summary over the problems
    finished so far, marked as such."""
    finished = state.lower() in ("finished", "succeeded")
    if finished:
        try:
            summary = format_summary(json.loads(read_text(out, "summary.json")))
            return f"{summary}\nstatus: {state}\nrun dir: {out} ({RUN_FILES})"
        except FileNotFoundError:
            pass  # finished without a summary (stopped between the last row and the summary)
    with contextlib.ExitStack() as stack:
        path = Path(out) / "results.jsonl"
        if is_uri(out):  # the checked reader runs on a local copy
            path = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "results.jsonl"
            with contextlib.suppress(FileNotFoundError):
                path.write_text(read_text(out, "results.jsonl"))
        if not path.is_file():
            raise ConfigError(f"{out} ({state}): no problem has finished yet")
        latest = {row["id"]: row for _, row in iter_rows(path)}  # a re-run problem: its last row
    totals = tally(latest.values())
    of = ""
    try:  # the run's own count, and the session's elapsed time (the rows' wall times overlap)
        status = json.loads(read_text(out, "status.json"))
        of, totals["ledger"]["wall_seconds"] = f" of {status['total']}", float(status["elapsed_s"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        algorithm = yaml.safe_load(read_text(out, "config.yaml"))["algorithm"]["name"]
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError):
        algorithm = "?"
    done = totals["n_problems"] + totals["failed"]
    head = f"PARTIAL ({state}): {done}{of} problems finished; the figures are over those only"
    return f"{head}\n{format_summary({**totals, 'algorithm': algorithm})}\nrun dir: {out} ({RUN_FILES})"


__all__ = [
    "format_summary",
    "results_text",
    "run_job",
    "summarize",
    "tally",
]
