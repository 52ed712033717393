"""Problems handed to an engine: a :class:`Lease` per problem, through a :class:`ProblemFeed`.

A lease is the one name of a problem handed out for searching, on every side: the driver
keeps the leases each search worker holds (with what it last heard of them), the wire carries
them, the engine searches them.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from treesearch.tasks.base import Problem


@dataclass(slots=True)
class Lease:
    """A problem handed to an engine.

    Attributes:
      problem: what to search.
      journal: encoded journal chunks of earlier attempts (:mod:`treesearch.journal`), replayed
        before the search goes on live; empty for a fresh problem.
      shared: a handle on a tree several workers search (:mod:`treesearch.shared_tree`): this
        lease is one worker's share of it. None: the problem's own tree.
      spec: how to search it, where it differs from the engine run's (a service request's own
        algorithm and budget); None: the run's.
      in_flight: driver side: the worst case of its requests in flight as last reported.
    """

    problem: Problem
    journal: list[bytes] = field(default_factory=list)
    shared: Any = None
    spec: Any = None
    in_flight: dict[str, float] = field(default_factory=dict)


class ProblemFeed:
    """Leases handed to an engine over time; ``close()`` says no more will come."""

    def __init__(self, items: Iterable[Problem | Lease] = (), closed: bool = False):
        self._items: deque[Lease] = deque(x if isinstance(x, Lease) else Lease(x) for x in items)
        self.closed = closed
        self._arrived = asyncio.Event() if not closed else None

    def put(self, lease: Lease) -> None:
        self._items.append(lease)
        if self._arrived is not None:
            self._arrived.set()

    def close(self) -> None:
        self.closed = True
        if self._arrived is not None:
            self._arrived.set()

    def __len__(self) -> int:
        return len(self._items)

    def take(self) -> Lease | None:
        return self._items.popleft() if self._items else None

    async def wait(self) -> Lease | None:
        """The next lease, waiting for one; None once the feed is closed and empty."""
        while not self._items and not self.closed:
            assert self._arrived is not None
            self._arrived.clear()
            await self._arrived.wait()
        return self.take()
