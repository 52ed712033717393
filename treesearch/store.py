"""The tree store: where a search worker's trees live while they are searched.

The engine opens a problem's tree here, searches against it, and closes it when the problem
is done (its tree then goes to the run dir). While a tree is open the store can be
snapshotted (a driver's live status and viewer read running searches through it), and, when
recording, it keeps each problem's *journal* (the backend answers the search consumed, in
order; :mod:`treesearch.context`): a driver collects journal deltas as they grow, and a
problem whose worker died is replayed from its journal by another worker, so it resumes
where it was instead of starting over.

The same trees can be shared by several workers through :class:`actors.tree_store.TreeStoreActor`
(tree-parallel MCTS): see :mod:`treesearch.shared_tree`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import msgpack

from treesearch.budget import BudgetGuard
from treesearch.context import GENERATE, JournalEntry
from treesearch.protocol import ExpandResult, GeneratedStep, ScoreResult
from treesearch.tree import Tree


class TreeStore:
    """Open trees by problem id, with their journals (see module docstring)."""

    def __init__(self) -> None:
        self.trees: dict[str, Tree] = {}
        self.guards: dict[str, BudgetGuard] = {}  # each open search's budget: spent, in flight
        self._journals: dict[str, list[JournalEntry]] = {}
        self._shipped: dict[str, int] = {}  # journal entries already handed out as deltas

    def open(
        self,
        problem_id: str,
        prompt: str,
        prompt_ids: Sequence[int],
        record: bool = False,
        guard: BudgetGuard | None = None,
    ) -> Tree:
        tree = Tree(prompt, prompt_ids, problem_id)
        self.trees[problem_id] = tree
        if guard is not None:
            self.guards[problem_id] = guard
        if record:
            self._journals[problem_id] = []
            self._shipped[problem_id] = 0
        return tree

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


def encode_journal(entries: Sequence[JournalEntry]) -> bytes:
    """Journal entries as msgpack (results as plain arrays); chunks concatenate."""
    return b"".join(msgpack.packb(e, use_bin_type=True) for e in entries)


def decode_journal(data: bytes) -> tuple[JournalEntry, ...]:
    """The inverse of :func:`encode_journal` over any concatenation of its chunks."""
    out = []
    unpacker = msgpack.Unpacker(use_list=False, raw=False)
    unpacker.feed(data)
    for kind, nodes, answers in unpacker:
        out.append((kind, tuple(nodes), tuple(_answer(kind, a) for a in answers)))
    return tuple(out)


def _answer(kind: int, a: Any) -> ExpandResult | ScoreResult:
    if kind == GENERATE:
        samples, *rest = a
        return ExpandResult(tuple(GeneratedStep(*s) for s in samples), *rest)
    scores, tokens, *rest = a
    return ScoreResult(tuple(tuple(x) for x in scores), tuple(tokens), *rest)
