"""``treesearch compare``: every algorithm at every budget on the same problems, seeds and pools.

A comparison is a grid of *cells* (algorithm x budget x seed). Each cell is an ordinary run
dir under ``OUT/runs/<cell>`` (resumable: a finished cell is read back, not re-run), made by
one ``run_cell(cfg, dir)`` callable, so the same code serves in-process backends and actor
pools shared by every cell (one plane, :func:`treesearch.cli.make_plane`). From the run dirs it writes
``comparison.csv`` / ``comparison.json`` (one row per cell, the columns of :data:`COLUMNS`),
the plots and ``report.html`` (see :mod:`treesearch.report`).

Budgets are per problem, in one unit of :data:`UNITS`; ``total_tokens`` and ``flops`` count
the PRM as well as the policy, ``generated_tokens`` and ``generator_calls`` count the policy
only. Each row reports the realised compute (mean and max per problem) beside the nominal
budget: a search may stop below it (beam's width is fixed) and never goes over it.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from treesearch.algorithms import parse_algorithm
from treesearch.budget import Budget, Ledger
from treesearch.config import JobConfig, parse_override
from treesearch.errors import ConfigError
from treesearch.safeio import iter_rows
from treesearch.schema import build

UNITS = ("generated_tokens", "total_tokens", "flops", "generator_calls")
Z95 = 1.959964  # two-sided 95% normal quantile

COLUMNS = (
    "algorithm", "budget_scope", "budget_unit", "budget", "seed", "problems",
    "accuracy", "accuracy_lo", "accuracy_hi", "coverage", "coverage_lo", "coverage_hi",
    "selection_gap", "realised_mean", "realised_max",
    "policy_tokens_mean", "policy_tokens_p90", "prm_tokens_mean", "prm_tokens_p90",
    "total_tokens_mean", "flops_mean", "wall_seconds", "accuracy_per_1k_tokens",
    "chosen_score_mean", "answered", "early_stops", "returned_mean", "frontier",
)  # fmt: skip


@dataclass(frozen=True)
class Cell:
    """One run of the grid. ``name`` is its run dir under ``OUT/runs``."""

    algorithm: str
    budget: float
    seed: int
    scope: str = "problem"  # "job": the budget x problems is one pool (treesearch.job_budget)

    def name(self, unit: str) -> str:
        pooled = "-job" if self.scope == "job" else ""
        return f"{self.algorithm}{pooled}-{unit}{self.budget:g}-seed{self.seed}"


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (Wilson, 1927); ``(0, 1)`` when ``n == 0``."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in [0, 100]); 0 for no values."""
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def parse_params(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["beam.width=8", "mcts.c=2"]`` -> ``{"beam": {"width": 8}, "mcts": {"c": 2}}``."""
    out: dict[str, dict[str, Any]] = {}
    for text in items:
        keys, value = parse_override(text)
        if len(keys) != 2:
            raise ConfigError(f"--params {text!r}: expected ALGORITHM.KEY=VALUE")
        out.setdefault(keys[0], {})[keys[1]] = value
    return out


def plan(
    cfg: JobConfig,
    algorithms: Sequence[str],
    budgets: Sequence[float],
    unit: str,
    seeds: int,
    params: dict[str, dict[str, Any]] | None = None,
    scopes: Sequence[str] = ("problem",),
) -> list[tuple[Cell, JobConfig]]:
    """The grid's cells and their configs; every config is validated before anything runs.

    An algorithm's parameters: ``params[name]`` over the config's own ``algorithm`` section
    when it names the same algorithm, else over the algorithm's defaults (``auto`` shapes,
    sized by each cell's budget). ``scopes``: per-problem budgets, and / or one job-wide pool
    of ``budget x problems`` (``job``). The config's other ``budget`` keys (early stopping,
    the pool's floor and cap) apply to every cell.
    """
    if unit not in UNITS:
        raise ConfigError(f"--budget-unit: {unit!r} is not one of {list(UNITS)}")
    if not algorithms or not budgets or seeds < 1:
        raise ConfigError("compare: needs at least one algorithm, one budget and --seeds >= 1")
    if any(b <= 0 for b in budgets):
        raise ConfigError(f"--budgets: every budget must be > 0, got {list(budgets)}")
    params = params or {}
    unknown = set(params) - set(algorithms)
    if unknown:
        raise ConfigError(f"--params: {sorted(unknown)} not among --algorithms")
    if not scopes or any(s not in ("problem", "job") for s in scopes):
        raise ConfigError(f"--budget-scope: expected problem and / or job, got {list(scopes)}")
    base = {k: v for k, v in cfg.algorithm.items() if k != "name"}
    no_limits = {u: None for u in cfg.budget.limits()}
    cells = []
    for name in algorithms:
        own = base if cfg.algorithm.get("name") == name else {}
        algo = {"name": name, **own, **params.get(name, {})}
        for scope in scopes:
            for budget in budgets:
                value = int(budget) if unit != "flops" else float(budget)
                budget_fields = {**dataclasses.asdict(cfg.budget), **no_limits, unit: value, "scope": scope}
                limits = build(Budget, budget_fields, "budget")
                parse_algorithm(algo)
                for seed in range(cfg.run.seed, cfg.run.seed + seeds):
                    # every cell on the same pools, the engine in the driver (cells differ in
                    # algorithm and budget; search workers are built for one job)
                    run = dataclasses.replace(cfg.run, seed=seed, search_workers=0)
                    c = dataclasses.replace(cfg, algorithm=algo, budget=limits, run=run)
                    cells.append((Cell(name, budget, seed, scope), c))
    return cells


def read_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The latest row of each problem of a cell's run dir (failed ones excluded)."""
    path = run_dir / "results.jsonl"
    if not path.is_file():
        return []
    latest = {row["id"]: row for _, row in iter_rows(path)}
    return [r for r in latest.values() if r.get("status", "ok") == "ok"]


def cell_row(cell: Cell, unit: str, rows: list[dict[str, Any]], wall_seconds: float) -> dict[str, Any]:
    """One CSV row from a cell's per-problem results (see :data:`COLUMNS`)."""
    n = len(rows)
    ledgers = [Ledger.from_dict(r["ledger"]) for r in rows]
    correct = sum(bool(r["correct"]) for r in rows)
    covered = sum(bool(r["covered"]) for r in rows)
    policy = [float(x.policy_generated_tokens) for x in ledgers]
    prm = [float(x.prm_tokens) for x in ledgers]
    total = [float(x.total_tokens) for x in ledgers]
    realised = [float(x.value(unit)) for x in ledgers]
    scores = [r["answer_score"] for r in rows if r.get("answer_score") is not None]
    mean = lambda xs: sum(xs) / len(xs) if xs else 0.0  # noqa: E731
    acc = correct / n if n else 0.0
    acc_ci, cov_ci = wilson(correct, n), wilson(covered, n)
    return {
        "algorithm": cell.algorithm,
        "budget_scope": cell.scope,
        "budget_unit": unit,
        "budget": cell.budget,
        "seed": cell.seed,
        "problems": n,
        "accuracy": acc,
        "accuracy_lo": acc_ci[0],
        "accuracy_hi": acc_ci[1],
        "coverage": covered / n if n else 0.0,
        "coverage_lo": cov_ci[0],
        "coverage_hi": cov_ci[1],
        "selection_gap": (covered - correct) / n if n else 0.0,
        "realised_mean": mean(realised),
        "realised_max": max(realised, default=0.0),
        "policy_tokens_mean": mean(policy),
        "policy_tokens_p90": percentile(policy, 90),
        "prm_tokens_mean": mean(prm),
        "prm_tokens_p90": percentile(prm, 90),
        "total_tokens_mean": mean(total),
        "flops_mean": mean([x.flops for x in ledgers]),
        "wall_seconds": wall_seconds,
        "accuracy_per_1k_tokens": acc / (mean(total) / 1000) if mean(total) else 0.0,
        "chosen_score_mean": mean(scores),
        "answered": len(scores),
        "early_stops": sum(x.early_stops for x in ledgers),
        "returned_mean": mean([x.budget_returned for x in ledgers]),
        "frontier": False,  # set by mark_frontier over the pooled rows
    }


def run_grid(
    cells: Sequence[tuple[Cell, JobConfig]],
    out: Path,
    unit: str,
    run_cell: Callable[[JobConfig, Path], dict[str, Any]],
    stream: TextIO = sys.stderr,
) -> list[dict[str, Any]]:
    """Runs (or resumes) every cell into ``out/runs``; one progress line per finished cell."""
    rows, started = [], time.perf_counter()
    for i, (cell, cfg) in enumerate(cells, 1):
        run_dir = out / "runs" / cell.name(unit)
        summary = run_cell(cfg, run_dir)
        row = cell_row(cell, unit, read_rows(run_dir), summary["ledger"]["wall_seconds"])
        rows.append(row)
        spent = time.perf_counter() - started
        eta = spent / i * (len(cells) - i)
        stream.write(
            f"[{i}/{len(cells)}] {cell.name(unit)}: accuracy {row['accuracy']:.1%}, coverage "
            f"{row['coverage']:.1%}, {row['realised_mean']:,.0f} {unit}/problem  (eta {eta:.0f} s)\n"
        )
        stream.flush()
    return rows


def write_tables(rows: list[dict[str, Any]], out: Path) -> tuple[Path, Path]:
    """``comparison.csv`` and ``comparison.json`` (the same rows)."""
    out.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out / "comparison.csv", out / "comparison.json"
    with csv_path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    json_path.write_text(json.dumps({"columns": list(COLUMNS), "rows": rows}, indent=2) + "\n")
    return csv_path, json_path


def format_table(rows: list[dict[str, Any]]) -> str:
    """A compact text table: one line per algorithm x budget (seeds pooled)."""
    head = f"{'algorithm':<16} {'budget':>9} {'accuracy':>8} {'95% CI':>13} {'coverage':>8} {'gap':>6} " \
           f"{'realised':>9} {'prm tok':>8} {'acc/1k tok':>10}"  # fmt: skip
    lines = [head]
    for r in pool_seeds(rows):
        name = label(r) + (" *" if r.get("frontier") else "")
        lines.append(
            f"{name:<16} {r['budget']:>9g} {r['accuracy']:>8.1%} "
            f"{r['accuracy_lo']:>6.0%}-{r['accuracy_hi']:<6.0%} {r['coverage']:>8.1%} "
            f"{r['selection_gap']:>6.1%} {r['realised_mean']:>9,.0f} {r['prm_tokens_mean']:>8,.0f} "
            f"{r['accuracy_per_1k_tokens']:>10.3f}"
        )
    lines.append("* on the accuracy-vs-compute frontier (no other row is as accurate for less compute)")
    return "\n".join(lines)


def label(row: dict[str, Any]) -> str:
    """A row's algorithm, marked ``(job)`` when its budget was one job-wide pool."""
    return row["algorithm"] + (" (job)" if row.get("budget_scope") == "job" else "")


def _key(row: dict[str, Any]) -> tuple[str, str, float]:
    return row["algorithm"], row.get("budget_scope", "problem"), row["budget"]


def mark_frontier(rows: list[dict[str, Any]]) -> None:
    """Sets ``frontier`` on every row whose algorithm x scope x budget (seeds pooled) is
    Pareto-optimal in accuracy vs realised compute per problem: no other is at least as
    accurate for at most as much compute, and strictly better in one."""
    pooled = pool_seeds(rows)
    best = set()
    for r in pooled:
        acc, cost = r["accuracy"], r["realised_mean"]
        if not any(
            o is not r
            and o["accuracy"] >= acc
            and o["realised_mean"] <= cost
            and (o["accuracy"] > acc or o["realised_mean"] < cost)
            for o in pooled
        ):
            best.add(_key(r))
    for r in rows:
        r["frontier"] = _key(r) in best


def write_best(
    rows: list[dict[str, Any]], cells: Sequence[tuple[Cell, JobConfig]], out: Path, unit: str
) -> Path:
    """``best.yaml``: per budget, the most accurate algorithm x scope (seeds pooled; ties to
    less compute) with its figures; and ``best/<unit><budget>.yaml``, that cell's whole job
    config, so ``treesearch run OUT/best/<file>`` runs what the comparison found."""
    configs = {(c.algorithm, c.scope, c.budget): cfg for c, cfg in cells}
    by_budget: dict[float, dict[str, Any]] = {}
    for r in pool_seeds(rows):
        cur = by_budget.get(r["budget"])
        if cur is None or (r["accuracy"], -r["realised_mean"]) > (cur["accuracy"], -cur["realised_mean"]):
            by_budget[r["budget"]] = r
    (out / "best").mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {}
    for budget, r in sorted(by_budget.items()):
        cfg = configs[_key(r)]
        path = out / "best" / f"{unit}{budget:g}.yaml"
        path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        index[f"{unit} {budget:g}"] = {
            "algorithm": dict(cfg.algorithm),
            "budget_scope": r.get("budget_scope", "problem"),
            "accuracy": round(r["accuracy"], 4),
            "accuracy_95ci": [round(r["accuracy_lo"], 4), round(r["accuracy_hi"], 4)],
            "realised_mean": round(r["realised_mean"], 1),
            "seeds": r["seeds"],
            "config": str(path.relative_to(out)),
        }
    best = out / "best.yaml"
    head = "# The most accurate cell per budget (seeds pooled); run one: treesearch run OUT/best/<file>\n"
    best.write_text(head + yaml.safe_dump(index, sort_keys=False))
    return best


def pool_seeds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of one algorithm x budget merged over seeds: means, with Wilson CIs over every
    problem x seed (counts recovered from the per-seed rates)."""
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(_key(r), []).append(r)
    out = []
    for (algo, scope, budget), rs in groups.items():
        n = sum(r["problems"] for r in rs)
        correct = round(sum(r["accuracy"] * r["problems"] for r in rs))
        covered = round(sum(r["coverage"] * r["problems"] for r in rs))
        merged = {k: sum(r[k] for r in rs) / len(rs) for k in COLUMNS if isinstance(rs[0][k], float)}
        merged.update(algorithm=algo, budget=budget, budget_unit=rs[0]["budget_unit"], problems=n)
        merged.update(budget_scope=scope, frontier=rs[0].get("frontier", False))
        merged["early_stops"] = sum(r.get("early_stops", 0) for r in rs)
        merged["realised_max"] = max(r["realised_max"] for r in rs)
        merged["accuracy"], merged["coverage"] = correct / n if n else 0.0, covered / n if n else 0.0
        merged["accuracy_lo"], merged["accuracy_hi"] = wilson(correct, n)
        merged["coverage_lo"], merged["coverage_hi"] = wilson(covered, n)
        merged["selection_gap"] = merged["coverage"] - merged["accuracy"]
        merged["seeds"] = len(rs)
        out.append(merged)
    return out
