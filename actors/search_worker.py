"""Search workers: Ray actors that each run the engine on problems the driver hands them.

A worker resolves the job from its config (the driver validated it), builds its transports
(clients of every replica of both pools, or the job's in-process backends for benchmarks) and
runs one :class:`treesearch.engine.Engine` over a :class:`treesearch.feed.ProblemFeed`,
recording journals. The driver talks to it with one call, :meth:`SearchWorker.step`: leases
in; finished problems, journal deltas and how many more problems it can take out. Journals
let another worker resume a problem of a worker that died (:mod:`treesearch.journal`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import ray

from actors.clients import dispatch_stats
from actors.replicas import Replicas, clients
from actors.shared_tree import SharedTreeClient
from treesearch.config import JobConfig
from treesearch.engine import Engine, EngineOptions
from treesearch.feed import Lease, ProblemFeed
from treesearch.job import Sections, resolve, transports
from treesearch.results import ProblemResult
from treesearch.tree import Tree

GATHER_S = 0.02  # after a first result, how long a step waits for the rest of its burst
TELEMETRY_S = 1.0  # how often a step carries the per-problem in-flight ledgers and pool counters


@ray.remote
class SearchWorker:
    """One search process (see module docstring).

    Args:
      cfg: the job's config, and ``sections`` its typed tagged sections (:class:`treesearch.job.Sections`).
      replicas: the replicas of both pools, or None to run the job's in-process backends here.
      index: this worker's number (logs, stats, its name on shared trees).
    """

    def __init__(self, cfg: JobConfig, sections: Sections, replicas: Replicas | None, index: int):
        self.job = resolve(cfg, sections)
        generator, remote = clients(self.job, replicas) if replicas is not None else (None, None)
        self.generator, self.scorer = transports(self.job, generator, remote)
        self.spec = self.job.spec(self.generator)
        self.index = index
        self.engine = Engine(self.generator, self.scorer, EngineOptions(cfg.run.concurrency, record=True))
        self.feed: ProblemFeed | None = None
        self.running: asyncio.Task | None = None
        self.outbox: list[tuple[dict[str, Any], bytes | None]] = []
        self.arrived: asyncio.Event | None = None
        self.nodes = 0
        self.cpu0 = 0.0
        self.telemetry_at = 0.0

    def _start(self) -> None:
        self.feed, self.arrived = ProblemFeed(), asyncio.Event()
        self.cpu0 = time.thread_time()
        self.running = asyncio.ensure_future(self.engine.run(self.feed, self.spec, on_result=self._done))

    def _done(self, result: ProblemResult, tree: Tree) -> None:
        self.nodes += result.nodes
        self.outbox.append((result.to_json(), tree.to_msgpack() if self.job.cfg.run.save_trees else None))
        assert self.arrived is not None
        self.arrived.set()

    async def step(self, leases: list[Lease], wait_s: float = 0.5) -> dict[str, Any]:
        """Takes ``leases``; returns once problems are done (a lease's worth, or what is done
        :data:`GATHER_S` after the first) or after ``wait_s``:

        * ``results``: finished problems as (row, tree bytes);
        * ``journals``: per open problem, its journal entries since the last step;
        * ``in_flight``: per open problem, the worst case of its requests in flight (what it
          would lose if this worker died now); with ``dispatch`` (its clients' counters),
          refreshed every :data:`TELEMETRY_S` (None in between);
        * ``want``: problems it can take now;
        * ``nodes`` / ``cpu_seconds``: its totals so far (CPU of its engine's thread).
        """
        if self.running is None:
            self._start()
        assert self.feed is not None and self.running is not None
        for lease in leases:
            if lease.shared is not None:  # this worker's handle on the shared tree
                lease.shared = SharedTreeClient(lease.shared, lease.problem.id, f"w{self.index}")
            self.feed.put(lease)
        size = self.job.cfg.run.lease
        if not self.outbox and not self.running.done():
            await self._wait(wait_s)
        if self.outbox and len(self.outbox) < size and not self.running.done():
            await asyncio.sleep(GATHER_S)  # results come in bursts: one reply for the burst
        if self.running.done() and self.running.exception() is not None:
            raise self.running.exception()  # job-level: every replica gone, ...
        results, self.outbox = self.outbox, []
        trees = self.engine.trees
        reply = {
            "results": results,
            "journals": trees.journal_deltas(),
            "in_flight": None,
            "dispatch": None,
            "want": max(0, self.job.cfg.run.concurrency + size - len(trees) - len(self.feed)),
            "nodes": self.nodes,
            "cpu_seconds": time.thread_time() - self.cpu0,
        }
        now = time.monotonic()
        if now - self.telemetry_at >= TELEMETRY_S:
            self.telemetry_at = now
            reply["in_flight"] = {pid: g.reserved.to_dict() for pid, g in trees.guards.items()}
            reply["dispatch"] = dispatch_stats(self.generator, self.scorer)
        return reply

    async def _wait(self, seconds: float) -> None:
        assert self.arrived is not None and self.running is not None
        self.arrived.clear()
        done = asyncio.ensure_future(self.arrived.wait())
        await asyncio.wait([done, self.running], timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        done.cancel()

    async def snapshot(self, problem_ids: list[str] | None = None) -> dict[str, bytes]:
        """Its open trees (all, or those named), as msgpack bytes: a running job's live view."""
        return self.engine.trees.snapshot(problem_ids)

    async def stats(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "open": len(self.engine.trees),
            "queued": len(self.feed) if self.feed else 0,
            "nodes": self.nodes,
            "cpu_seconds": time.thread_time() - self.cpu0,
        }
