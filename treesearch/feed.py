"""Problems handed to an engine: a :class:`Lease` per problem, through a :class:`ProblemFeed`;
how many a search worker may take at once (:class:`FinishRates`).

A lease is the one name of a problem handed out for searching, on every side: the driver
keeps the leases each search worker holds (with what it last heard of them), the wire carries
them, the engine searches them.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
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


class FinishRates:
    """Each search worker's pace (problems finished per second since its first lease), and the
    share of the queue's last problems that pace earns it.

    Pulls already give a worker that falls behind fewer new problems over the job (it asks only
    for slots it freed); what they miss is the tail: when the queue runs short, a slow worker
    (an older GPU node, a noisy neighbour) would still take a full pull and hold the job's last
    problems while the fast ones idle. :meth:`cap` limits a pull to the worker's share of what is
    queued, by pace.

    Its pace is the worker's whole run so far (not a recent window): enough for a slow node, and
    the dispatch's own speed estimates handle replicas that slow down mid-job.

    Attributes:
      finished: problems each worker finished in this run.
      since: when each worker's first lease of this run went out (``clock`` seconds; None before).
    """

    SLOWER = 2.0  # a worker this many times slower than the fastest may be refused the last problems

    def __init__(self, workers: int, slots: int, clock: Callable[[], float] = time.monotonic):
        self.slots, self.clock = slots, clock
        self.finished = [0] * workers
        self.since: list[float | None] = [None] * workers

    def handed(self, worker: int) -> None:
        if self.since[worker] is None:
            self.since[worker] = self.clock()

    def done(self, worker: int) -> None:
        self.finished[worker] += 1

    def rates(self) -> list[float]:
        """Problems/s of each worker since its first lease (0 before one finished)."""
        now = self.clock()
        return [
            n / max(1e-3, now - s) if s is not None else 0.0
            for n, s in zip(self.finished, self.since, strict=True)
        ]

    def cap(self, worker: int, wanted: int, queued: int, gone: frozenset[int] = frozenset()) -> int:
        """How many of ``queued`` problems a pull of ``wanted`` by ``worker`` may take.

        Its share by pace among the live workers, rounded down (an even share, rounded up, before
        any finished or for its first pull). A worker within ``SLOWER`` of the fastest always
        gets at least one (so the fastest is never refused); a slower one gets none once the
        others would drain the queue before it finished a problem (``slots`` / its pace)."""
        rates = self.rates()
        live = [r for i, r in enumerate(rates) if i not in gone]
        total = sum(live)
        if total <= 0 or self.since[worker] is None:  # nothing to go by yet
            return min(wanted, max(1, math.ceil(queued / max(1, len(live)))))
        mine = rates[worker]
        if mine * self.SLOWER >= max(live):
            return min(wanted, max(1, math.floor(queued * mine / total)))
        if mine <= 0 or queued / total < self.slots / mine:
            return 0
        return min(wanted, math.floor(queued * mine / total))
