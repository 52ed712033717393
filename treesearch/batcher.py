"""The batcher: one backend call carries the pending requests of every running search.

Each search awaits its own requests; the :class:`Batcher` holds them until no running search
can add more (every one is waiting on pending or in-flight work), then sends everything
pending, in chunks of at most ``max_batch``. There is no lockstep barrier across problems:
a search resumes as soon as its own results are in.

Each request travels with a :class:`Reply`, the slot its answer goes to. A transport that can
answer part of a chunk early (:class:`treesearch.protocol.Dispatching`, e.g. a replica pool)
fills replies as its calls return, so a straggling replica holds only the requests it serves;
a search wakes once, when the last answer of its submission is in (one future per submission,
not per request: the loop's per-request cost is a few attribute writes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from treesearch.feed import Lease, ProblemFeed
from treesearch.protocol import Dispatching


class _Submission:
    """One search's batch of requests: a future for all of them, their answers so far."""

    __slots__ = ("batcher", "future", "left", "lockstep", "results", "waiting")

    def __init__(self, batcher: Batcher | None, n: int, future: asyncio.Future):
        self.batcher, self.future = batcher, future
        self.results: list[Any] = [None] * n
        self.left = n
        self.waiting = batcher is not None
        self.lockstep = batcher is not None and batcher.lockstep

    def stop_waiting(self, cancelled: bool = False) -> None:  # answered, failed or cancelled
        if self.waiting:
            self.waiting = False
            self.batcher.waiting -= 1  # type: ignore[union-attr]
            if cancelled:  # its requests still queued are dropped at the next flush
                self.batcher.cancelled += 1  # type: ignore[union-attr]


class Reply:
    """Where the answer to one request goes (``set``) or its error (``fail``). Answers to a
    submission whose search was cancelled are dropped."""

    __slots__ = ("i", "sub")

    def __init__(self, sub: _Submission, i: int):
        self.sub, self.i = sub, i

    def done(self) -> bool:
        return self.sub.future.done()

    def set(self, result: Any) -> None:
        sub = self.sub
        if sub.lockstep:
            sub.batcher.lockstep_answered()  # type: ignore[union-attr]
        if sub.future.done():
            return
        sub.results[self.i] = result
        sub.left -= 1
        if sub.left == 0:
            sub.stop_waiting()
            sub.future.set_result(sub.results)

    def fail(self, error: BaseException) -> None:
        sub = self.sub
        if sub.lockstep:
            sub.batcher.lockstep_answered()  # type: ignore[union-attr]
        if not sub.future.done():
            sub.stop_waiting()
            sub.future.set_exception(error)


def replies(n: int, batcher: Batcher | None = None) -> tuple[list[Reply], asyncio.Future]:
    """``n`` replies and the future that gets all their answers, in order (or the first error)."""
    future = asyncio.get_running_loop().create_future()
    sub = _Submission(batcher, n, future)
    if batcher is not None:
        # a cancelled search waits no more, and its queued requests are dropped
        future.add_done_callback(lambda f: sub.stop_waiting(f.cancelled()))
    return [Reply(sub, i) for i in range(n)], future


# send(requests, replies): answers replies[i] with the result of requests[i]
Send = Callable[[list[Any], list[Reply]], None]


def fan_out(call: Callable[[list[Any]], Awaitable[list[Any]]]) -> Send:
    """A :data:`Send` over a whole-batch call (in-process backends): one call per chunk."""

    async def run(requests: list[Any], answers: list[Reply]) -> None:
        try:
            results = await call(requests)
            if len(results) != len(requests):
                raise RuntimeError(f"backend returned {len(results)} results for {len(requests)} requests")
        except Exception as e:  # every waiting search gets the failure
            for a in answers:
                a.fail(e)
            return
        for a, r in zip(answers, results, strict=True):
            a.set(r)

    tasks: set[asyncio.Task] = set()  # strong references until done

    def send(requests: list[Any], answers: list[Reply]) -> None:
        task = asyncio.ensure_future(run(requests, answers))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    return send


def sender(transport: Any, call: Callable[[list[Any]], Awaitable[list[Any]]]) -> Send:
    """The transport's own per-request delivery if it has one, else :func:`fan_out`."""
    return transport.dispatch if isinstance(transport, Dispatching) else fan_out(call)


class Batcher:
    """Collects requests from all running searches; flushes when none can add more. Requests
    are the protocol's (``ExpandRequest``, ``ScoreRequest``): each names its ``problem_id``.

    ``active`` counts searches running, ``waiting`` those whose latest submission still has
    unanswered requests. When ``waiting == active`` nothing more can be added before some
    result arrives, so every pending request is sent. ``waiting`` drops the moment a
    submission's last result is delivered (not when its search resumes), so searches woken by
    one batch are all counted as runnable and their next requests travel together.

    Attributes:
      generator_batches, scorer_batches: backend calls made (chunks sent).
      generator_requests: requests those generator calls carried.
      max_searches_per_call: the most searches (trees) one generator call served: > 1 when
        searches are batched together at the pool.
      dropped: requests of cancelled searches dropped before they were sent.
      lockstep: benchmark baseline: nothing is sent while any request is in flight.
    """

    def __init__(self, generator: Any, scorer: Any, max_batch: int = 4096, lockstep: bool = False):
        self.generator, self.scorer, self.max_batch = generator, scorer, max_batch
        self.lockstep = lockstep
        self.active = 0
        self.waiting = 0
        self.generator_batches = 0
        self.scorer_batches = 0
        self.generator_requests = 0
        self.max_searches_per_call = 0
        self.cancelled = 0  # submissions cancelled since the last flush
        self.dropped = 0
        self._in_flight = 0  # lockstep: requests sent and not yet answered
        self._gen: tuple[list[Any], list[Reply]] = ([], [])
        self._score: tuple[list[Any], list[Reply]] = ([], [])
        self._send_gen = sender(generator, generator.generate)
        self._send_score = sender(scorer, scorer.score)

    def pending(self) -> int:
        """Requests queued here, not yet sent."""
        return len(self._gen[0]) + len(self._score[0])

    async def generate(self, requests: Sequence[Any]) -> list[Any]:
        return await self._submit(self._gen, requests)

    async def score(self, requests: Sequence[Any]) -> list[Any]:
        return await self._submit(self._score, requests)

    async def _submit(self, queue: tuple[list[Any], list[Reply]], requests: Sequence[Any]) -> list[Any]:
        if not requests:
            return []
        answers, future = replies(len(requests), self)
        queue[0].extend(requests)
        queue[1].extend(answers)
        self.waiting += 1
        self._maybe_flush()
        return await future

    def open_slots(self, n: int) -> None:
        """``n`` more search slots run (each takes its problems with :meth:`take`)."""
        self.active += n

    async def take(self, feed: ProblemFeed) -> Lease | None:
        """A slot's next problem; None once the feed is closed and empty (the slot is then
        parked for good). Taken without yielding when one is there, so the count of running
        searches stays exact between problems; parked while the slot waits for one."""
        lease = feed.take()
        if lease is None:
            self.park()
            lease = await feed.wait()
            if lease is not None:
                self.unpark()
        return lease

    def park(self) -> None:
        """A search waits on something that is no request (a problem, a shared tree): it can
        add nothing until that arrives."""
        self.active -= 1
        self._maybe_flush()

    def unpark(self) -> None:
        self.active += 1

    def lockstep_answered(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:  # the barrier lifts when the last request of a step returns
            self._maybe_flush()

    def _maybe_flush(self) -> None:
        if self.waiting < self.active or (self.lockstep and self._in_flight):
            return
        if self.cancelled:  # a search was cancelled (a client went away): its queued requests go
            self.cancelled = 0
            for requests, answers in (self._gen, self._score):
                keep = [i for i, a in enumerate(answers) if not a.done()]
                self.dropped += len(answers) - len(keep)
                requests[:], answers[:] = [requests[i] for i in keep], [answers[i] for i in keep]
        for (requests, answers), send, is_gen in (
            (self._gen, self._send_gen, True),
            (self._score, self._send_score, False),
        ):
            while requests:
                chunk, chunk_answers = requests[: self.max_batch], answers[: self.max_batch]
                del requests[: self.max_batch], answers[: self.max_batch]
                if is_gen:
                    self.generator_batches += 1
                    self.generator_requests += len(chunk)
                    searches = len({r.problem_id for r in chunk})
                    if searches > self.max_searches_per_call:
                        self.max_searches_per_call = searches
                else:
                    self.scorer_batches += 1
                if self.lockstep:
                    self._in_flight += len(chunk)
                send(chunk, chunk_answers)
