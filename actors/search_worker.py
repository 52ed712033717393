"""Search workers: Ray actors that each run the engine on problems the driver hands them.

A worker builds the job from its config (the driver validated it), its transports to every
replica of both pools (or the job's in-process backends, for benchmarks), and runs one
engine over a :class:`treesearch.engine.ProblemFeed` with its own trees in a
:class:`treesearch.store.TreeStore`. The driver talks to it with one call, :meth:`step`:
new leases in, finished problems and journal deltas out, and how many more problems it can
take. Journals let another worker resume a problem of a worker that died
(:mod:`treesearch.context`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import ray

from actors.pools import dispatch_stats
from actors.tree_store import StoreClient
from treesearch.config import JobConfig
from treesearch.engine import Lease, ProblemFeed, ProblemResult
from treesearch.job import engine_scorer, local_backends, resolve
from treesearch.store import TreeStore, decode_journal
from treesearch.tasks.base import Problem
from treesearch.tree import Tree

GATHER_S = 0.02  # after a first result, how long a step waits for the rest of its burst
TELEMETRY_S = 1.0  # how often a step carries the per-problem in-flight ledgers and pool counters

# A lease on the wire: the problem, the journal of earlier attempts (b"": none), and the tree
# store holding its tree if it is a share of a tree-parallel search (else None).
WireLease = tuple[Problem, bytes, Any]


@ray.remote
class SearchWorker:
    """One search process (see module docstring).

    Args:
      cfg: the job's resolved config.
      replicas: the replica handles (``actors.driver.Replicas``), or None to run the job's
        in-process backends inside this worker.
      index: this worker's number (logs, stats).
    """

    def __init__(self, cfg: JobConfig, replicas: Any, index: int):
        from actors.driver import transports

        self.job = resolve(cfg)
        if replicas is None:
            self.generator, self.scorer = local_backends(self.job)
        else:
            self.generator, remote = transports(self.job, replicas)
            self.scorer = engine_scorer(self.job, self.generator, remote)
        self.index = index
        self.store = TreeStore()
        self.feed: ProblemFeed | None = None
        self.engine: asyncio.Task | None = None
        self.outbox: list[tuple[dict[str, Any], bytes | None]] = []
        self.arrived: asyncio.Event | None = None
        self.nodes = 0
        self.cpu0 = 0.0
        self.telemetry_at = 0.0

    def _start(self) -> None:
        self.feed, self.arrived = ProblemFeed(), asyncio.Event()
        self.cpu0 = time.thread_time()
        self.engine = asyncio.ensure_future(
            self.job.run(
                self.feed, self.generator, self.scorer, on_result=self._done, store=self.store, record=True
            )
        )

    def _done(self, result: ProblemResult, tree: Tree) -> None:
        self.nodes += result.nodes
        self.outbox.append((result.to_json(), tree.to_msgpack() if self.job.cfg.run.save_trees else None))
        assert self.arrived is not None
        self.arrived.set()

    async def step(self, leases: list[WireLease], wait_s: float = 0.5) -> dict[str, Any]:
        """Takes ``leases``; returns once problems are done (a lease's worth, or what is done
        :data:`GATHER_S` after the first) or after ``wait_s``:

        * ``results``: finished problems as (row, tree bytes);
        * ``journals``: per open problem, its journal entries since the last step;
        * ``in_flight``: per open problem, the worst case of its requests in flight (what it
          would lose if this worker died now); with ``dispatch`` (its pools' counters),
          refreshed every :data:`TELEMETRY_S` (None in between);
        * ``want``: problems it can take now;
        * ``nodes`` / ``cpu_seconds``: its totals so far (CPU of its engine's thread).
        """
        if self.engine is None:
            self._start()
        assert self.feed is not None and self.arrived is not None and self.engine is not None
        for problem, journal, store in leases:
            client = StoreClient(store, problem.id, f"w{self.index}") if store is not None else None
            self.feed.put(Lease(problem, decode_journal(journal) if journal else (), client))
        lease = self.job.cfg.run.lease
        if not self.outbox and not self.engine.done():
            await self._wait(wait_s)
        if self.outbox and len(self.outbox) < lease and not self.engine.done():
            await asyncio.sleep(GATHER_S)  # results come in bursts: one reply for the burst
        if self.engine.done() and self.engine.exception() is not None:
            raise self.engine.exception()  # job-level: every replica gone, ...
        results, self.outbox = self.outbox, []
        cfg = self.job.cfg
        reply = {
            "results": results,
            "journals": self.store.journal_deltas(),
            "in_flight": None,
            "dispatch": None,
            "want": max(0, cfg.run.concurrency + lease - len(self.store) - len(self.feed)),
            "nodes": self.nodes,
            "cpu_seconds": time.thread_time() - self.cpu0,
        }
        now = time.monotonic()
        if now - self.telemetry_at >= TELEMETRY_S:
            self.telemetry_at = now
            reply["in_flight"] = {pid: g.reserved.to_dict() for pid, g in self.store.guards.items()}
            reply["dispatch"] = dispatch_stats(self.generator, self.scorer)
        return reply

    async def _wait(self, seconds: float) -> None:
        assert self.arrived is not None and self.engine is not None
        self.arrived.clear()
        done = asyncio.ensure_future(self.arrived.wait())
        await asyncio.wait([done, self.engine], timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        done.cancel()

    async def snapshot(self, problem_ids: list[str] | None = None) -> dict[str, bytes]:
        """Its open trees (all, or those named), as msgpack bytes: a running job's live view."""
        return self.store.snapshot(problem_ids)

    async def stats(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "open": len(self.store),
            "queued": len(self.feed) if self.feed else 0,
            "nodes": self.nodes,
            "cpu_seconds": time.thread_time() - self.cpu0,
        }
