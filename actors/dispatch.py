"""Dispatch: a thin transport over N replicas of a Ray actor (after Ray's ActorPool).

It knows nothing about the search. A batch of requests is split across replicas:

* **prefix affinity**: requests with the same affinity key (the problem id, so one tree's
  prefixes) go to the replica that served the key before, which holds the key's KV-cache
  prefixes, as long as that replica's load is within ``affinity_bound`` requests of the
  least-loaded replica; otherwise the key moves to the least-loaded replica;
* **least-loaded**: new keys go to the replica with the fewest requests in flight;
* **cap**: each call carries at most ``max_batch`` requests and each replica has at most
  ``max_calls_in_flight`` calls outstanding;
* **fault tolerance**: when a replica dies (``RayActorError``, which covers
  ``ActorDiedError``; or ``ActorUnavailableError`` while it restarts), its in-flight
  requests are re-issued, to the restarted replica or another one. Each request's result is
  delivered exactly once, so the ledger, which counts delivered results, never double counts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ray.exceptions import ActorUnavailableError, RayActorError

Req = TypeVar("Req")
Res = TypeVar("Res")

# Exceptions that mean "this replica is gone or restarting": re-issue, do not fail the job.
REPLICA_LOST = (RayActorError, ActorUnavailableError)


class DispatchError(RuntimeError):
    """A request could not be served after every retry."""


@dataclass
class PoolStats:
    """Counters of a pool. ``routed[r]``: requests sent to replica r (retries included)."""

    routed: list[int]
    calls: int = 0
    reissued: int = 0
    affinity_hits: int = 0
    affinity_moves: int = 0
    busy_seconds: list[float] = field(default_factory=list)


class ReplicaPool(Generic[Req, Res]):
    """Routes batches of requests to actor replicas (see module docstring).

    Args:
      handles: the replicas (Ray actor handles, created with restarts allowed).
      invoke: ``invoke(handle, batch) -> awaitable list of results`` (e.g. an ObjectRef).
      key: affinity key of a request.
      affinity_bound: how many more requests in flight than the least-loaded replica a
        key's home replica may have and still receive the key's requests.
      max_batch: requests per call at most.
      max_calls_in_flight: outstanding calls per replica at most.
      max_retries: re-issues of one chunk after replica loss before giving up.
      retry_delay_s: first back-off after a loss (doubles each retry, at most 5 s).
    """

    def __init__(
        self,
        handles: Sequence[Any],
        invoke: Callable[[Any, list[Req]], Awaitable[list[Res]]],
        key: Callable[[Req], str],
        affinity_bound: int = 16,
        max_batch: int = 256,
        max_calls_in_flight: int = 4,
        max_retries: int = 8,
        retry_delay_s: float = 0.2,
    ):
        if not handles:
            raise ValueError("a pool needs at least one replica")
        self.handles = list(handles)
        self.invoke, self.key = invoke, key
        self.affinity_bound, self.max_batch = affinity_bound, max_batch
        self.max_retries, self.retry_delay_s = max_retries, retry_delay_s
        self.load = [0] * len(self.handles)  # requests in flight per replica
        self.home: dict[str, int] = {}
        self.stats = PoolStats(routed=[0] * len(self.handles), busy_seconds=[0.0] * len(self.handles))
        self.max_calls_in_flight = max_calls_in_flight
        self._slots: list[asyncio.Semaphore] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def route(self, key: str) -> int:
        """The replica for one request with affinity key ``key`` (updates the key's home)."""
        least = min(range(len(self.load)), key=self.load.__getitem__)
        home = self.home.get(key)
        if home is not None and self.load[home] <= self.load[least] + self.affinity_bound:
            self.stats.affinity_hits += 1
            return home
        if home is not None:
            self.stats.affinity_moves += 1
        self.home[key] = least
        return least

    async def submit(self, requests: Sequence[Req]) -> list[Res]:
        """Results for ``requests``, in order."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a pool outlives a job's event loop (compare runs many jobs)
            self._loop = loop
            self._slots = [asyncio.Semaphore(self.max_calls_in_flight) for _ in self.handles]
        groups: dict[int, list[int]] = {}
        for i, req in enumerate(requests):
            r = self.route(self.key(req))
            groups.setdefault(r, []).append(i)
            self.load[r] += 1
        results: list[Any] = [None] * len(requests)
        chunks = [
            (r, idx[s : s + self.max_batch])
            for r, idx in groups.items()
            for s in range(0, len(idx), self.max_batch)
        ]
        await asyncio.gather(*(self._serve(r, idx, requests, results) for r, idx in chunks))
        return results

    async def _serve(self, r: int, idx: list[int], requests: Sequence[Req], results: list[Any]) -> None:
        batch = [requests[i] for i in idx]
        try:
            for attempt in range(self.max_retries + 1):
                async with self._slots[r]:
                    started = time.perf_counter()
                    self.stats.calls += 1
                    self.stats.routed[r] += len(batch)
                    try:
                        out = await self.invoke(self.handles[r], batch)
                        break
                    except REPLICA_LOST as e:
                        if attempt == self.max_retries:
                            raise DispatchError(
                                f"replica {r} lost {self.max_retries + 1} times; last error: {e}"
                            ) from e
                        self.stats.reissued += len(batch)
                    finally:
                        self.stats.busy_seconds[r] += time.perf_counter() - started
                await asyncio.sleep(min(5.0, self.retry_delay_s * 2**attempt))
            if len(out) != len(batch):
                raise DispatchError(f"replica {r} returned {len(out)} results for {len(batch)} requests")
            for i, res in zip(idx, out, strict=True):
                results[i] = res
        finally:
            self.load[r] -= len(batch)
