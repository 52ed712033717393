"""What a problem's search came to (:class:`ProblemResult`), and what a job tolerates of them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from treesearch.budget import Ledger
from treesearch.tasks.base import Problem, Task
from treesearch.tree import Tree

OK, FAILED, PART = "ok", "failed", "part"  # part: one worker's share of a shared tree


class JobFailed(RuntimeError):
    """More problems failed than the job allows: the cause is not one problem."""


@dataclass
class ProblemResult:
    """One problem's outcome. ``covered``: some terminal node of the tree is correct.
    ``status``: ``ok``, or ``failed`` with ``error`` (then nothing else is meaningful but the
    compute spent), or ``part`` (a share of a shared tree: its compute only)."""

    id: str
    answer: str | None
    answer_node: int | None
    correct: bool
    covered: bool
    nodes: int
    ledger: Ledger
    answer_score: float | None = None
    status: str = OK
    error: str | None = None
    stop_reason: str = "complete"  # complete | verified | threshold | budget (the engine's words)

    def to_json(self) -> dict[str, Any]:
        row = {
            "id": self.id,
            "status": self.status,
            "answer": self.answer,
            "answer_node": self.answer_node,
            "answer_score": self.answer_score,
            "correct": self.correct,
            "covered": self.covered,
            "nodes": self.nodes,
            "ledger": self.ledger.to_dict(),
            "stop_reason": self.stop_reason,
        }
        if self.error is not None:
            row["error"] = self.error
        return row


def evaluate(
    problem: Problem, task: Task, tree: Tree, answer_node: int | None, ledger: Ledger
) -> ProblemResult:
    """Ground-truth evaluation of a finished tree (the search has already chosen)."""
    correct = answer_node is not None and task.is_correct(problem, tree.steps(answer_node))
    covered = correct or any(task.is_correct(problem, tree.steps(n)) for n in tree.terminals())
    score = None
    if answer_node is not None and not math.isnan(tree.prm_score[answer_node]):
        score = tree.prm_score[answer_node]
    return ProblemResult(
        id=problem.id,
        answer=None if answer_node is None else tree.answer[answer_node],
        answer_node=answer_node,
        correct=correct,
        covered=covered,
        nodes=len(tree) - 1,
        ledger=ledger,
        answer_score=score,
    )


def failed(problem: Problem, error: BaseException, tree: Tree, ledger: Ledger) -> ProblemResult:
    """A problem whose search raised: its error, and the compute it spent."""
    return ProblemResult(problem.id, None, None, False, False, len(tree) - 1, ledger, status=FAILED,
                         error=f"{type(error).__name__}: {error}")  # fmt: skip


def part(problem_id: str, ledger: Ledger) -> ProblemResult:
    """One worker's share of a shared tree: its compute (the tree and answer are the store's)."""
    return ProblemResult(problem_id, None, None, False, False, 0, ledger, status=PART)


class FailureLimit:
    """How many failed problems a job tolerates; :meth:`count` raises :class:`JobFailed` past
    that (the engine and the search-worker fleet share it)."""

    def __init__(self, limit: int):
        self.limit, self.failed = limit, 0

    @classmethod
    def of(cls, max_failed_fraction: float, n_problems: int) -> FailureLimit:
        """``run.max_failed_fraction`` of a job's problems, at least 2."""
        return cls(max(2, int(max_failed_fraction * n_problems)))

    def count(self, status: str, error: str | None) -> None:
        if status == FAILED:
            self.failed += 1
            if self.failed > self.limit:
                raise JobFailed(f"{self.failed} problems failed (more than {self.limit}); last: {error}")
