"""The trees an engine is searching now, with their budgets and journals.

The engine opens a problem's tree here, searches it, and closes it when the problem is done
(its tree then goes to the run dir). While a tree is open it can be snapshotted (a running
job's live view reads searches in progress through it) and, when recording, its journal
(:mod:`treesearch.journal`) grows here: a driver collects the journal deltas as they grow,
so that a problem whose worker died is replayed by another worker and resumes where it was.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from treesearch.budget import BudgetGuard
from treesearch.journal import JournalEntry, encode_journal
from treesearch.tree import Tree


class OpenTrees:
    """Open trees by problem id (see module docstring).

    Attributes:
      trees: each open problem's tree.
      guards: each open search's budget (spent, and in flight).
    """

    def __init__(self) -> None:
        self.trees: dict[str, Tree] = {}
        self.guards: dict[str, BudgetGuard] = {}
        self._journals: dict[str, list[JournalEntry]] = {}
        self._shipped: dict[str, int] = {}  # journal entries already handed out as deltas

    def open(
        self, problem_id: str, prompt: str, prompt_ids: Sequence[int], record: bool, guard: BudgetGuard
    ) -> tuple[Tree, list[JournalEntry] | None]:
        """A new tree for ``problem_id``, and the list its journal is recorded in (None: not)."""
        tree = self.trees[problem_id] = Tree(prompt, prompt_ids, problem_id)
        self.guards[problem_id] = guard
        journal = None
        if record:
            journal = self._journals[problem_id] = []
            self._shipped[problem_id] = 0
        return tree, journal

    def journal(self, problem_id: str) -> list[JournalEntry] | None:
        return self._journals.get(problem_id)

    def close(self, problem_id: str) -> None:
        self.trees.pop(problem_id, None)
        self.guards.pop(problem_id, None)
        self._journals.pop(problem_id, None)
        self._shipped.pop(problem_id, None)

    def __len__(self) -> int:
        return len(self.trees)

    def snapshot(self, problem_ids: Iterable[str] | None = None) -> dict[str, bytes]:
        """The open trees (all, or those named) as msgpack bytes."""
        ids = self.trees if problem_ids is None else [p for p in problem_ids if p in self.trees]
        return {p: self.trees[p].to_msgpack() for p in ids}

    def journal_deltas(self) -> dict[str, bytes]:
        """Per open, recorded problem: the journal entries not handed out before, encoded."""
        out = {}
        for pid, journal in self._journals.items():
            start = self._shipped[pid]
            if start < len(journal):
                out[pid] = encode_journal(journal[start:])
                self._shipped[pid] = len(journal)
        return out
