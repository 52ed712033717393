"""Dispatch: a thin transport over N replicas of a Ray actor (after Ray's ActorPool).

It knows nothing about the search. A batch of requests is split across replicas:

* **prefix affinity by stable hashing with bounded loads** (Mirrokni, Thorup & Zadimoghaddam,
  2018, "Consistent hashing with bounded loads"): each affinity key (the problem id, so one
  tree's prefixes) ranks the replicas by rendezvous hashing (the same ranking in every
  process) and is homed on the first replica in its ranking that holds fewer than
  ``balance`` x the mean number of active keys; the key stays there (its KV-cache prefixes
  do), and a tree whose worker died goes back there. A key idle for ``idle_s`` is released;
* **bound on expected wait**: a request goes to its key's home while the home's expected wait
  is within ``affinity_bound`` requests' worth (of the pool's median service time) of the
  replica that would finish it first, else (this request only) to the next replica of the
  key's ranking within the bound, or that first one. A replica's expected wait is its load
  times its service time: load is what this pool has in flight there plus what other callers
  had there when the replica last answered (its reported queue depth less this pool's own
  requests), so workers do not pile onto one replica; its speed is what the replica reports
  with its depth (:class:`Service`): its latency with no queue ahead, plus its load times its
  busy seconds per request answered, is when it would answer. On a pool of equal
  speeds this is the bound on queue length it generalises (``by_wait=False`` routes by queue
  length alone). A key sent away from its home in ``rehome_after`` routings in a row is homed
  where it went, so a slow replica sheds its homes gradually;
* **cap**: each call carries at most ``max_batch`` requests and each replica has at most
  ``max_calls_in_flight`` calls outstanding from this pool;
* **faults**: when a replica dies (``RayActorError``, which covers ``ActorDiedError``; or
  ``ActorUnavailableError`` while it restarts) or does not answer within
  ``request_timeout_s`` (then it is killed so Ray restarts it), the call's requests are
  re-issued to another replica. Each request's result is delivered exactly once, so the
  ledger, which counts delivered results, never double counts. A replica that refused
  ``gone_after`` calls in a row at once (Ray answers calls to an actor it will not restart
  with an immediate ``ActorDiedError``; calls lost in flight when a replica died do not count:
  Ray restarts it) is taken as gone; when every replica is gone, requests fail with
  :class:`treesearch.protocol.BackendUnavailable` (the job stops). A request lost
  ``max_retries`` + 1 times fails with :class:`DispatchError` (its problem fails); waiting on
  replicas that Ray is restarting (``ActorUnavailableError``: a vLLM engine takes a minute to
  come back) is not charged to those retries but bounded by ``restart_wait_s``.

Results are delivered per call as they come (:meth:`Router.dispatch`): a straggling
replica holds only the requests it serves.
"""

from __future__ import annotations

import asyncio
import math
import time
import zlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, TypeVar

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from treesearch.batcher import Reply, replies
from treesearch.protocol import BackendUnavailable

Req = TypeVar("Req")
Res = TypeVar("Res")

# Exceptions that mean "this replica is gone or restarting": re-issue, do not fail the job.
REPLICA_LOST = (RayActorError, ActorUnavailableError)
REFUSED_S = 0.05  # a call that fails this fast was refused, not lost in flight


class Service(NamedTuple):
    """What a replica reports of its speed with each answer (:class:`actors.replica.ServiceTime`).

    Attributes:
      seconds_per_request: busy seconds per request answered (the inverse of its throughput).
      latency_s: how long a request takes there with no queue ahead of it (a decaying minimum
        of its requests' times from arrival to answer): one engine step at least.
    """

    seconds_per_request: float
    latency_s: float


SPEED_BAND = 1.5  # speed estimates within this factor of the pool's median count as the median


def banded(x: float, median: float) -> float:
    """``x``, or ``median`` where ``x`` lies within :data:`SPEED_BAND` of it."""
    return median if median / SPEED_BAND <= x <= median * SPEED_BAND else x


class DispatchError(RuntimeError):
    """A request could not be served after every retry."""


@dataclass
class PoolStats:
    """Counters of a router. ``routed[r]``: requests sent to replica r (re-issues included)."""

    routed: list[int]
    calls: int = 0
    dropped: int = 0  # requests of cancelled searches never sent
    reissued: int = 0
    timeouts: int = 0
    affinity_hits: int = 0
    affinity_moves: int = 0
    rehomed: int = 0  # keys homed again after being sent away from home rehome_after times
    busy_seconds: list[float] = field(default_factory=list)


def rendezvous_order(key: str, replicas: int) -> list[int]:
    """Replicas ranked for ``key`` by highest random weight (the same in every process)."""
    prefix = key.encode() + b"\x00"
    return sorted(range(replicas), key=lambda r: -zlib.crc32(prefix + r.to_bytes(4, "little")))


class Homes:
    """Each affinity key's home replica: the first of its rendezvous ranking under a bounded
    share of the active keys (``balance`` x the mean); a key idle for ``idle_s`` is released,
    and a key whose home is gone is homed again.

    Attributes:
      home: key -> (home replica, last use), least recently used first.
      keys_on: active keys homed on each replica.
      away: per key, routings in a row that sent most of its requests elsewhere; after
        ``rehome_after`` the key is homed where its last one went.
    """

    def __init__(self, gone: list[bool], balance: float = 1.1, idle_s: float = 30.0, rehome_after: int = 4):
        self.gone, self.balance, self.idle_s, self.rehome_after = gone, balance, idle_s, rehome_after
        self.away: dict[str, int] = {}  # routings in a row that sent a key away from its home
        self.home: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self.keys_on = [0] * len(gone)
        self._order: dict[str, list[int]] = {}

    def order(self, key: str) -> list[int]:
        order = self._order.get(key)
        if order is None:
            order = self._order[key] = rendezvous_order(key, len(self.gone))
        return order

    def _assign(self, key: str) -> int:
        """A home for a new key: the first in its ranking under the bounded share of keys."""
        live = sum(not g for g in self.gone)
        if not live:
            raise BackendUnavailable(f"all {len(self.gone)} replicas of the pool are gone")
        cap = math.ceil(self.balance * (len(self.home) + 1) / live)
        for r in self.order(key):
            if not self.gone[r] and self.keys_on[r] < cap:
                return r
        return min((r for r in range(len(self.gone)) if not self.gone[r]), key=self.keys_on.__getitem__)

    def _release_idle(self, now: float) -> None:
        while self.home:
            key, (r, used) = next(iter(self.home.items()))
            if now - used < self.idle_s:
                return
            del self.home[key]
            self.keys_on[r] -= 1
            self._order.pop(key, None)

    def rehome(self, key: str, replica: int) -> None:
        """Homes ``key`` on ``replica`` (it was sent there rather than home, repeatedly)."""
        home, used = self.home[key]
        self.keys_on[home] -= 1
        self.keys_on[replica] += 1
        self.home[key] = (replica, used)

    def tally(self, keys: Sequence[str], out: list[int], stats: PoolStats) -> None:
        """Affinity hits and moves; a key most of whose requests went elsewhere this time is
        one routing further away, and homed where its last one went after ``rehome_after`` in
        a row."""
        tally: dict[str, list[int]] = {}  # key -> [requests home minus away, last replica away]
        for r, k in zip(out, keys, strict=True):
            entry = tally.setdefault(k, [0, -1])
            if r == self.home[k][0]:
                stats.affinity_hits += 1
                entry[0] += 1
            else:
                stats.affinity_moves += 1
                entry[0] -= 1
                entry[1] = r
        for k, (net, r) in tally.items():
            if net >= 0:
                self.away.pop(k, None)
                continue
            self.away[k] = self.away.get(k, 0) + 1
            if self.away[k] >= self.rehome_after:
                self.rehome(k, r)
                stats.rehomed += 1
                del self.away[k]

    def home_of(self, key: str, now: float) -> int:
        """The key's home replica, assigned on its first request."""
        entry = self.home.get(key)
        if entry is None or self.gone[entry[0]]:
            if entry is not None:
                self.keys_on[entry[0]] -= 1
            self._release_idle(now)
            home = self._assign(key)
            self.keys_on[home] += 1
        else:
            home = entry[0]
            self.home.move_to_end(key)
        self.home[key] = (home, now)
        return home


class Speeds:
    """What a pool knows of each replica's speed: its last report (:class:`Service`) and the
    calls out to it now (when each was sent).

    Attributes:
      service: each replica's last report (None before its first).
      unanswered: per replica, when each call out now was sent (monotonic s).
      by_wait: weigh loads by speed (False: every replica counts as equal: queue length).
    """

    def __init__(self, n: int, by_wait: bool = True):
        self.service: list[Service | None] = [None] * n
        self.unanswered: list[list[float]] = [[] for _ in range(n)]
        self.by_wait = by_wait

    def estimates(self) -> tuple[list[float], list[float], float, float]:
        """Each replica's seconds per request and latency (the medians of the known ones for a
        replica that has not reported yet; 1 and 0 when routing by queue length), and the
        medians of both."""
        known = [s for s in self.service if s is not None and s.seconds_per_request > 0]
        n = len(self.service)
        if not self.by_wait or not known:
            return [1.0] * n, [0.0] * n, 1.0, 0.0
        per = sorted(s.seconds_per_request for s in known)[len(known) // 2]
        lat = sorted(s.latency_s for s in known)[len(known) // 2]
        usable = [s if s is not None and s.seconds_per_request > 0 else None for s in self.service]
        # a call out for longer than a replica's latency says it is slower now (or was never
        # measured: a slow replica's first calls), before any report does
        now = time.monotonic()
        latency = [
            max(s.latency_s if s else lat, now - min(sent) if sent else 0.0)
            for s, sent in zip(usable, self.unanswered, strict=True)
        ]
        # estimates within SPEED_BAND of the median are the median: equal replicas measured
        # at different loads route by queue length, not by noise
        return (
            [banded(s.seconds_per_request if s else per, per) for s in usable],
            [banded(x, lat) for x in latency],
            per,
            lat,
        )


class Router(Generic[Req, Res]):
    """Routes batches of requests to actor replicas (see module docstring).

    Args:
      handles: the replicas (Ray actor handles, created with restarts allowed).
      invoke: ``invoke(handle, batch) -> awaitable (results, queue depth[, speed])``: the
        replica's answers, its queue depth once they are out and, if it reports one, its speed
        (``(seconds per request, latency s)``: :class:`Service`; None before it knows).
      key: affinity key of a request.
      affinity_bound: how many requests' worth (at the pool's median service time) of extra
        expected wait a key's home may have over the replica that would finish a request
        first, and still receive the key's requests.
      by_wait: weigh each replica's load by its service time (False: queue length alone).
      rehome_after: routings in a row that send a key away from its home before the key is
        homed where it went.
      max_batch: requests per call at most.
      max_calls_in_flight: outstanding calls per replica at most.
      max_retries: re-issues of one call after replica loss before its requests fail.
      retry_delay_s: first back-off after a loss (doubles each retry, at most 5 s).
      request_timeout_s: a call not answered by then is re-issued and its replica restarted
        (None: no deadline).
      gone_after: calls refused at once in a row after which a replica is taken as gone.
      restart_wait_s: how long a request waits, in all, on replicas Ray is restarting
        (``ActorUnavailableError``: not charged to ``max_retries``) before it fails.
      balance: active keys a replica may be home to, as a multiple of the mean.
      idle_s: a key without requests for this long is no longer active.
      restart: ``restart(handle)`` for a replica that did not answer in time (default: kill
        it, and Ray restarts it).
    """

    def __init__(
        self,
        handles: Sequence[Any],
        invoke: Callable[[Any, list[Req]], Awaitable[tuple[list[Res], int]]],
        key: Callable[[Req], str],
        affinity_bound: int = 16,
        max_batch: int = 256,
        max_calls_in_flight: int = 4,
        max_retries: int = 8,
        retry_delay_s: float = 0.2,
        request_timeout_s: float | None = None,
        gone_after: int = 8,
        restart_wait_s: float = 600.0,
        balance: float = 1.1,
        idle_s: float = 30.0,
        restart: Callable[[Any], None] | None = None,
        by_wait: bool = True,
        rehome_after: int = 4,
    ):
        if not handles:
            raise ValueError("a pool needs at least one replica")
        self.handles = list(handles)
        self.invoke, self.key = invoke, key
        self.affinity_bound, self.max_batch = affinity_bound, max_batch
        self.max_retries, self.retry_delay_s = max_retries, retry_delay_s
        self.request_timeout_s, self.gone_after = request_timeout_s, gone_after
        self.restart_wait_s = restart_wait_s
        n = len(self.handles)
        self.load = [0] * n  # this pool's requests in flight per replica
        self.others = [0] * n  # other callers' requests at each replica, as of its last answer
        self.lost = [0] * n  # calls refused at once, in a row
        self.gone = [False] * n
        self.speeds = Speeds(n, by_wait)
        self.stats = PoolStats(routed=[0] * n, busy_seconds=[0.0] * n)
        self.max_calls_in_flight = max_calls_in_flight
        self.restart = restart or (lambda handle: ray.kill(handle, no_restart=False))
        self.homes = Homes(self.gone, balance, idle_s, rehome_after)
        self._slots: list[asyncio.Semaphore] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task] = set()

    # ------------------------------------------------------------------ routing
    def estimate(self, r: int) -> int:
        return self.load[r] + self.others[r]

    def route(self, keys: Sequence[str]) -> list[int]:
        """The replica of each request of a batch with these affinity keys: its key's home
        unless, once the batch is out, the home's expected time to answer (its latency plus
        its load times its seconds per request) would exceed the shortest by more than
        ``affinity_bound`` requests' worth; then (the batch's last such requests first) the
        next replica of the key's ranking within the bound, else the one that answers it
        first. Keys sent away ``rehome_after`` times in a row are homed where they went."""
        now = time.monotonic()
        out = [self.homes.home_of(k, now) for k in keys]
        final = [self.estimate(r) for r in range(len(self.handles))]
        for r in out:
            final[r] += 1
        per, lat, median, median_lat = self.speeds.estimates()
        # latencies jitter by about one step between equal replicas: the bound allows a step
        bound = self.affinity_bound * median + median_lat
        live = [r for r in range(len(self.handles)) if not self.gone[r]]

        def wait(r: int, extra: int) -> float:  # expected seconds to answer a request at r
            return lat[r] + (final[r] + extra) * per[r]

        def first() -> tuple[int, float]:
            """The replica that would answer one more request first, and the limit it sets."""
            best = min(live, key=lambda r: wait(r, 1))
            return best, wait(best, 0) + bound

        least, limit = first()
        for i in range(len(out) - 1, -1, -1):
            h = out[i]
            if wait(h, 0) <= limit:
                continue
            ranked = (r for r in self.homes.order(keys[i]) if not self.gone[r] and r != h)
            target = next((r for r in ranked if wait(r, 1) <= limit), least)
            out[i] = target
            final[h] -= 1
            final[target] += 1
            least, limit = first()
        self.homes.tally(keys, out, self.stats)
        return out

    def _reroute(self, lost: int) -> int:
        """Another live replica for a lost call (the least loaded), or ``lost`` itself when
        it is the only one left."""
        live = [r for r in range(len(self.handles)) if not self.gone[r] and r != lost]
        if not live:
            if self.gone[lost]:
                raise BackendUnavailable(f"all {len(self.handles)} replicas of the pool are gone")
            return lost
        return min(live, key=self.estimate)

    # ------------------------------------------------------------------ sending
    def _ensure_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a pool outlives a job's event loop (compare runs many jobs)
            self._loop = loop
            self._slots = [asyncio.Semaphore(self.max_calls_in_flight) for _ in self.handles]

    def dispatch(self, requests: list[Req], answers: list[Reply]) -> None:
        """Sends ``requests``; each reply gets its request's result when its call returns."""
        self._ensure_loop()
        groups: dict[int, list[int]] = {}
        try:
            routes = self.route([self.key(req) for req in requests])
        except BackendUnavailable as e:
            for a in answers:
                a.fail(e)
            return
        for i, r in enumerate(routes):
            groups.setdefault(r, []).append(i)
            self.load[r] += 1
        for r, idx in groups.items():
            for s in range(0, len(idx), self.max_batch):
                part = idx[s : s + self.max_batch]
                task = asyncio.ensure_future(
                    self._serve(r, [requests[i] for i in part], [answers[i] for i in part])
                )
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def submit(self, requests: Sequence[Req]) -> list[Res]:
        """Results for ``requests``, in order."""
        answers, future = replies(len(requests))
        self.dispatch(list(requests), answers)
        return list(await future)

    async def _call(self, r: int, batch: list[Req], answers: list[Reply]) -> list[Res | None]:
        async with self._slots[r]:
            # requests whose search was cancelled while this call waited for a slot are not sent
            live = [i for i, a in enumerate(answers) if not a.done()]
            self.stats.dropped += len(batch) - len(live)
            if not live:
                return [None] * len(batch)
            sent = batch if len(live) == len(batch) else [batch[i] for i in live]
            started = time.perf_counter()
            self.stats.calls += 1
            self.stats.routed[r] += len(sent)
            sent_at = time.monotonic()
            self.speeds.unanswered[r].append(sent_at)
            try:
                call = self.invoke(self.handles[r], sent)
                out, depth, *service = await (
                    asyncio.wait_for(call, self.request_timeout_s) if self.request_timeout_s else call
                )
            finally:
                self.speeds.unanswered[r].remove(sent_at)
                self.stats.busy_seconds[r] += time.perf_counter() - started
        if service and service[0] is not None:
            self.speeds.service[r] = Service(*service[0])
        # the replica's depth once this batch was out, less what this pool still has there
        self.others[r] = max(0, depth - (self.load[r] - len(sent)))
        if len(out) != len(sent):
            raise DispatchError(f"replica {r} returned {len(out)} results for {len(sent)} requests")
        if sent is batch:
            return out
        full: list[Res | None] = [None] * len(batch)
        for i, res in zip(live, out, strict=True):
            full[i] = res
        return full

    async def _serve(self, r: int, batch: list[Req], answers: list[Reply]) -> None:
        n = len(batch)
        attempt, restarting_s = 0, 0.0  # losses charged to these requests; time spent on restarts
        try:
            while True:
                started = time.perf_counter()
                try:
                    out = await self._call(r, batch, answers)
                    self.lost[r] = 0
                    break
                except (TimeoutError, *REPLICA_LOST) as e:
                    took = time.perf_counter() - started
                    if isinstance(e, asyncio.TimeoutError):
                        self.stats.timeouts += 1
                        self.restart(self.handles[r])  # a hung replica: Ray restarts it
                    # Refused at once by an actor Ray will not restart: towards "gone". A call
                    # lost in flight, or to a replica Ray is restarting, is not.
                    refused = isinstance(e, ActorDiedError) and took < REFUSED_S
                    self.lost[r] = self.lost[r] + 1 if refused else 0
                    if self.lost[r] >= self.gone_after:
                        self.gone[r] = True
                    if isinstance(e, ActorUnavailableError):  # restarting: waits, bounded in time
                        restarting_s += took
                        if restarting_s > self.restart_wait_s:
                            raise DispatchError(
                                f"replicas restarting for more than {self.restart_wait_s:.0f} s; "
                                f"last: replica {r}: {type(e).__name__}"
                            ) from e
                    else:
                        attempt += 1
                        if attempt > self.max_retries:
                            raise DispatchError(
                                f"request lost {self.max_retries + 1} times; "
                                f"last: replica {r}: {type(e).__name__}"
                            ) from e
                    self.stats.reissued += n
                    new = self._reroute(r)
                    self.load[r] -= n
                    self.load[new] += n
                    r = new
                    delay = min(5.0, self.retry_delay_s * 2 ** min(attempt, 10))
                    restarting_s += delay if isinstance(e, ActorUnavailableError) else 0.0
                    await asyncio.sleep(delay)
        except Exception as e:  # this call's requests fail; other calls go on
            for a in answers:
                a.fail(e)
            return
        finally:
            self.load[r] -= n
        for a, res in zip(answers, out, strict=True):
            a.set(res)
