"""The journal of a search: every backend answer it consumed, in the order it consumed them.

Algorithms are deterministic given their answers, so replaying a journal into a fresh context
reproduces the tree and the ledger exactly without calling any backend; then the search goes
on live. That is how a problem whose search worker died resumes on another worker where it
was (:mod:`actors.fleet`), and how a test checks a search's determinism.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple

import msgpack

from treesearch.protocol import ExpandResult, GeneratedStep, ScoreResult

GENERATE, SCORE = 0, 1  # what an entry answered
KIND_NAMES = ("generate", "score")


class JournalEntry(NamedTuple):
    """One ask of a search: its kind, the nodes it asked about, the answers in that order."""

    kind: int
    nodes: tuple[int, ...]
    answers: tuple[Any, ...]


class ReplayDiverged(RuntimeError):
    """A replayed search asked for something other than what its journal recorded."""


class Journal:
    """A search's answers: replayed from an earlier attempt while that lasts, then live; each
    one appended to ``record`` when recording (None: not recorded)."""

    __slots__ = ("_replay", "problem_id", "record")

    def __init__(
        self, problem_id: str, record: list[JournalEntry] | None = None, replay: Sequence[JournalEntry] = ()
    ):
        self.problem_id, self.record = problem_id, record
        self._replay: deque[JournalEntry] = deque(replay)

    async def answers(
        self,
        kind: int,
        nodes: tuple[int, ...],
        requests: list[Any],
        live: Callable[[list[Any]], Awaitable[Sequence[Any]]],
    ) -> tuple[Any, ...]:
        """The answers to ``requests`` (about ``nodes``): the next journal entry while replaying
        (checked against what was recorded), else ``await live(requests)``."""
        if self._replay:
            entry = self._replay.popleft()
            if entry.kind != kind or entry.nodes != nodes:
                raise ReplayDiverged(
                    f"problem {self.problem_id}: replay asked {KIND_NAMES[kind]} {nodes[:8]}, "
                    f"the journal has {KIND_NAMES[entry.kind]} {entry.nodes[:8]}"
                )
            answers = entry.answers
        else:
            answers = tuple(await live(requests))
        if self.record is not None:
            self.record.append(JournalEntry(kind, nodes, answers))
        return answers


def encode_journal(entries: Sequence[JournalEntry]) -> bytes:
    """Journal entries as msgpack (answers as plain arrays); chunks concatenate."""
    return b"".join(msgpack.packb(tuple(e), use_bin_type=True) for e in entries)


def decode_journal(data: bytes) -> tuple[JournalEntry, ...]:
    """The inverse of :func:`encode_journal` over any concatenation of its chunks."""
    out = []
    unpacker = msgpack.Unpacker(use_list=False, raw=False)
    unpacker.feed(data)
    for kind, nodes, answers in unpacker:
        out.append(JournalEntry(kind, tuple(nodes), tuple(_answer(kind, a) for a in answers)))
    return tuple(out)


def _answer(kind: int, a: Any) -> ExpandResult | ScoreResult:
    if kind == GENERATE:
        samples, *rest = a
        return ExpandResult(tuple(GeneratedStep(*s) for s in samples), *rest)
    scores, tokens, *rest = a
    return ScoreResult(tuple(tuple(x) for x in scores), tuple(tokens), *rest)
