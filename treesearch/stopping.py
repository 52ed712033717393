"""Early stopping: when a problem's search has its answer and should spend no more.

Best-of-N and tree searches spend their whole budget by default, whether the first chain
already solved the problem or not. Stopping early (Speculative Rejection, Sun et al., 2024;
Dynasor, Fu et al., 2024, stop settled chains) returns that compute: to nobody with a
per-problem budget (the ledger reports it), to the problems still open with a job-wide one
(:mod:`treesearch.job_budget`).

Two rules (``budget.early_stop``):

* ``verified``: a finished chain passes the task's exact check of a solution
  (``Task.check_solution``: it reads the chain and the rules, never the reference answer;
  Game of 24's is "every step valid and the last leaves 24"). The chain is the answer.
* ``threshold``: a scored finished chain's PRM score (its last step) is >= ``stop_score``, or
  ``stop_votes`` scored finished chains give the same answer. The best-scored such chain is
  the answer. A PRM can be confidently wrong, so this is opt-in.

``auto`` is ``verified`` where the task has a check, else ``never``.
"""

from __future__ import annotations

from collections.abc import Sequence

from treesearch.budget import Budget
from treesearch.tasks.base import Problem, Task
from treesearch.tree import Tree


class StopRule:
    """One job's early-stopping rule (see module docstring).

    Attributes:
      mode: ``verified``, ``threshold`` or ``never`` (``auto`` resolved against the task).
      score, votes: the threshold rule's PRM score and agreeing-answer count (0: no vote).
    """

    __slots__ = ("_check", "mode", "score", "votes")

    def __init__(self, budget: Budget | None, task: Task | None):
        check = getattr(task, "check_solution", None)
        mode = budget.early_stop if budget is not None else "never"
        if mode == "auto":
            mode = "verified" if check is not None else "never"
        if mode == "verified" and check is None:
            name = getattr(task, "name", None)
            raise ValueError(f"budget.early_stop verified: task {name} has no exact check of a solution")
        self.mode, self._check = mode, check
        self.score, self.votes = (budget.stop_score, budget.stop_votes) if budget is not None else (1.0, 0)

    def verified(self, problem: Problem, steps: Sequence[str]) -> bool:
        """A finished chain passes the task's check (``verified`` mode only)."""
        return self.mode == "verified" and bool(self._check(problem, steps))  # type: ignore[misc]

    def threshold_answer(self, tree: Tree, terminals: Sequence[int]) -> int | None:
        """``threshold`` mode: the answer node once the scored finished chains ``terminals``
        (every one the tree has) meet the rule, else None."""
        if self.mode != "threshold":
            return None
        scored = [n for n in terminals if tree.prm_score[n] == tree.prm_score[n]]  # not NaN
        best = max(scored, key=lambda n: (tree.prm_score[n], -n), default=None)
        if best is not None and tree.prm_score[best] >= self.score:
            return best
        if self.votes > 0:
            by_answer: dict[str, list[int]] = {}
            for n in scored:
                if tree.answer[n] is not None:
                    by_answer.setdefault(tree.answer[n], []).append(n)
            agreed = [ns for ns in by_answer.values() if len(ns) >= self.votes]
            if agreed:
                nodes = max(agreed, key=lambda ns: (len(ns), max(tree.prm_score[n] for n in ns)))
                return max(nodes, key=lambda n: (tree.prm_score[n], -n))
        return None


NEVER = StopRule(None, None)  # no early stop
