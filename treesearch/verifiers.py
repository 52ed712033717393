"""Composable verifiers: a PRM's step scores times the task's own checks.

Two checks exist, and they are not alike:

- ``rule``: the task's step-validity check (``Task.verify_step``): it reads the chain so far
  and nothing else, so it is a legitimate verifier a real system could run.
- ``reachability``: the solver's verdict that the answer is still reachable
  (``Task.step_reachable``). It knows the ground truth: an **ORACLE**, a ceiling for
  comparison, never a default.

``ProductScorer(inner, task, checks)`` multiplies each step score of ``inner`` by 1 or 0 per
check; once a step fails, later steps of the chain score 0 too. Checks cost no model compute,
so the ledger counts only the inner PRM's tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from treesearch.protocol import Scorer, ScoreRequest, ScoreResult
from treesearch.tasks.base import Problem, Task

CHECKS = ("rule", "reachability")
ORACLE_CHECKS = frozenset({"reachability"})


def passes(task: Task, problem: Problem, steps: Sequence[str], checks: Sequence[str]) -> list[bool]:
    """Per step: do all ``checks`` pass for the chain up to and including it? (A failed step
    fails every later one.)"""
    out, ok = [], True
    for i in range(1, len(steps) + 1):
        prefix = steps[:i]
        if ok and "rule" in checks:
            ok = bool(task.verify_step(problem, prefix))
        if ok and "reachability" in checks:
            ok = bool(task.step_reachable(problem, prefix))  # type: ignore[attr-defined]
        out.append(ok)
    return out


def check_checks(task: Task, checks: Sequence[str]) -> None:
    """Raises ValueError if ``checks`` names an unknown check or one ``task`` cannot run."""
    unknown = [c for c in checks if c not in CHECKS]
    if unknown:
        raise ValueError(f"unknown check(s) {unknown}; expected some of {list(CHECKS)}")
    if "rule" in checks and task.name != "game24":
        raise ValueError(f"task {task.name} has no rule step check")
    if "reachability" in checks and not hasattr(task, "step_reachable"):
        raise ValueError(f"task {task.name} has no solver (reachability)")


def describe(prm: Any, backend_oracle: bool) -> tuple[str, bool]:
    """``(label, is_oracle)`` of a job's verifier (its ``prm`` config section): e.g.
    ``("math_shepherd x rule", False)``.

    ``backend_oracle``: the backend itself reads the ground truth (Monte-Carlo rollouts graded
    against the answer, the rule backend with its solver reachability). Oracles are marked in
    the label: a ceiling, never a real verifier.
    """
    parts = [prm.backend, *prm.checks]
    if prm.backend == "rule" and backend_oracle:
        parts.insert(1, "reachability")  # the rule backend's own solver switch
    label = " x ".join(dict.fromkeys(parts))  # rule x rule reads once
    oracle = backend_oracle or "reachability" in parts
    return (f"{label} (ORACLE: a ceiling)" if oracle else label), oracle


class ProductScorer:
    """``inner`` times task checks (see module docstring).

    Attributes:
      inner: the wrapped scorer (a learned PRM transport, usually).
      checks: names from :data:`CHECKS`, applied in order.
    """

    def __init__(self, inner: Scorer, task: Task, checks: Sequence[str], problems: Mapping[str, Problem]):
        check_checks(task, checks)
        self.inner, self.task, self.checks = inner, task, tuple(checks)
        self.num_parameters = inner.num_parameters
        self.counter = inner.counter
        self._problems = problems  # by id; a service's change as requests come and go

    async def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        results = await self.inner.score(requests)
        out = []
        for req, res in zip(requests, results, strict=True):
            if res.refused:
                out.append(res)
                continue
            problem = self._problems[req.problem_id]
            scores = []
            for chain, chain_scores in zip(req.chains, res.scores, strict=True):
                keep = passes(self.task, problem, chain, self.checks)
                scores.append(tuple(s if k else 0.0 for s, k in zip(chain_scores, keep, strict=True)))
            out.append(ScoreResult(tuple(scores), res.tokens))
        return out


def compose(scorer: Scorer, task: Task, checks: Sequence[str], problems: Mapping[str, Problem]) -> Scorer:
    """``scorer`` unchanged when ``checks`` is empty, else a :class:`ProductScorer`."""
    return ProductScorer(scorer, task, checks, problems) if checks else scorer
