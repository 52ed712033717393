"""The driver's side of search workers: hand out problems, merge results, survive deaths.

:class:`WorkerFleet` is a :class:`treesearch.runner.SearchPlane`. It keeps one
:meth:`SearchWorker.step` call outstanding per worker; each reply brings finished problems
(written to the run dir by the runner, each exactly once), journal deltas of the problems the
worker holds, and how many more it can take, which the next call hands it (at most
``run.lease`` at a time, so the tail of a job spreads over the workers: work stealing by
small pulls).

When a job has fewer problems than workers (and its algorithm has a tree-parallel search:
MCTS), the workers share each problem's tree through a :class:`actors.tree_store.TreeStoreActor`
instead: each gets a share, and once every share is in, the driver judges the tree's answer.

A worker that dies (Ray restarts it, up to ``max_restarts``): the problems it held go back to
the front of the queue with their journals, and whichever worker takes one replays its
journal and carries on where the dead one was: the compute the journal carries is counted in
the problem's ledger once. The summary reports the lost attempts and, apart, the compute they
had in flight when the driver last heard from them (``lost_ledger``: worst cases of those
requests, whose answers died with the worker).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from actors.pools import merge_dispatch_stats
from actors.search_worker import SearchWorker
from actors.tree_store import TreeStoreActor
from treesearch.budget import Ledger
from treesearch.engine import FAILED, JobFailed, evaluate
from treesearch.job import Job
from treesearch.runner import OnResult
from treesearch.tasks.base import Problem
from treesearch.tree import Tree


@dataclass
class Held:
    """A problem a worker holds: its journal so far and its requests in flight as last reported;
    ``shared``: a share of a tree several workers search (tree-parallel)."""

    problem: Problem
    journal: list[bytes] = field(default_factory=list)
    in_flight: dict[str, float] = field(default_factory=dict)
    shared: bool = False


@dataclass
class SharedProblem:
    """A problem searched by several workers: its shares out, and their compute so far."""

    shares: int = 0
    ledger: Ledger = field(default_factory=Ledger)


class WorkerFleet:
    """``run.search_workers`` search workers (see module docstring)."""

    def __init__(self, job: Job, replicas: Any, workers: int, max_restarts: int = 3, wait_s: float = 0.5):
        cfg = job.cfg
        self.job, self.wait_s, self.max_restarts = job, wait_s, max_restarts
        self.workers = [
            SearchWorker.options(max_restarts=max_restarts, max_task_retries=0, num_cpus=0).remote(
                cfg, replicas, i
            )
            for i in range(workers)
        ]
        self.lost_attempts = 0
        self.replayed = 0
        self.lost = Ledger()
        self.held: list[dict[str, Held]] = []
        self.stores: list[Any] = []  # tree stores of tree-parallel searches
        self.worker_stats: list[dict[str, Any]] = [{} for _ in self.workers]
        self.dispatch: list[dict[str, Any]] = [{} for _ in self.workers]
        self._cpu_base = [0.0] * len(self.workers)  # each worker's CPU seconds at the last run's end

    def shutdown(self) -> None:
        for w in [*self.workers, *self.stores]:
            ray.kill(w, no_restart=True)

    async def snapshot(self) -> dict[str, bytes]:
        """Every open tree of every live worker (a running job's live view)."""
        out: dict[str, bytes] = {}
        for part in await asyncio.gather(
            *(w.snapshot.remote() for w in self.workers), return_exceptions=True
        ):
            if isinstance(part, dict):
                out.update(part)
        return out

    async def run(
        self, problems: Sequence[Problem], on_result: OnResult, max_failures: int
    ) -> dict[str, Any]:
        cpu0, wall0 = time.thread_time(), time.perf_counter()
        store = await self._open_shared(problems)
        if store is None:
            queue: deque[Held] = deque(Held(p) for p in problems)
        else:  # fewer problems than workers: each worker searches a share of one tree
            queue = deque(Held(problems[i % len(problems)], shared=True) for i in range(len(self.workers)))
        shared = {p.id: SharedProblem() for p in problems} if store is not None else {}
        remaining = len(problems)
        failed = nodes = 0
        held = self.held = [{} for _ in self.workers]  # problems each worker holds now
        losses = [0] * len(self.workers)  # deaths in a row, per worker
        gone: set[int] = set()
        lease_size = self.job.cfg.run.lease

        async def drive(i: int, worker: Any) -> None:
            nonlocal remaining, failed, nodes
            want = self.job.cfg.run.concurrency + lease_size
            while remaining > 0:
                grant = []
                for _ in range(len(queue)):
                    if len(grant) >= min(want, lease_size):
                        break
                    h = queue.popleft()
                    if h.problem.id in held[i]:  # a second share of a tree it already searches
                        queue.append(h)
                        continue
                    held[i][h.problem.id] = h
                    if h.shared:
                        shared[h.problem.id].shares += 1
                    grant.append((h.problem, b"".join(h.journal), store if h.shared else None))
                try:
                    reply = await worker.step.remote(grant, self.wait_s)
                except RayTaskError as e:  # the worker's engine hit a job-level error
                    raise e.as_instanceof_cause() from None
                except RayActorError as e:  # the worker died: its problems go back, journals kept
                    for pid, h in held[i].items():
                        if h.shared:  # its selections in flight will never be committed
                            shared[pid].shares -= 1
                            await store.abandon.remote(pid, f"w{i}")
                    self._requeue(held[i], queue)
                    if e.actor_init_failed:
                        raise RuntimeError(f"search worker {i} failed to start: {e}") from e
                    losses[i] += 1
                    if losses[i] > self.max_restarts:  # Ray will not bring it back
                        gone.add(i)
                        if len(gone) == len(self.workers):
                            raise RuntimeError(
                                f"every search worker died ({self.max_restarts} restarts each): {e}"
                            ) from e
                        return
                    await asyncio.sleep(0.5)  # Ray restarts it; the next call waits for that
                    want = self.job.cfg.run.concurrency + lease_size
                    continue
                losses[i] = 0
                for row, tree in reply["results"]:
                    h = held[i].pop(row["id"], None)
                    if h is None:
                        continue  # not this worker's (cannot happen; never written twice)
                    if h.shared:  # one share done (a failed share ends its part; the tree goes on)
                        share = shared[row["id"]]
                        share.shares -= 1
                        share.ledger.add(Ledger.from_dict(row["ledger"]))
                        if share.shares or any(h.problem.id == row["id"] for h in queue):
                            continue
                        row, tree = await self._finish_shared(store, row["id"], share.ledger, problems)
                    remaining -= 1
                    nodes += row["nodes"]
                    failed += row.get("status") == FAILED
                    on_result(row, tree)
                    if failed > max_failures:
                        raise JobFailed(
                            f"{failed} problems failed (more than {max_failures}); last: {row.get('error')}"
                        )
                for pid, chunk in reply["journals"].items():
                    if pid in held[i]:
                        held[i][pid].journal.append(chunk)
                for pid, in_flight in (reply["in_flight"] or {}).items():
                    if pid in held[i]:
                        held[i][pid].in_flight = in_flight
                self.worker_stats[i] = {"nodes": reply["nodes"], "cpu_seconds": reply["cpu_seconds"]}
                if reply["dispatch"] is not None:
                    self.dispatch[i] = reply["dispatch"]
                want = reply["want"]

        tasks = [asyncio.ensure_future(drive(i, w)) for i, w in enumerate(self.workers)]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                if t.exception() is not None:
                    raise t.exception()
        finally:
            for t in tasks:
                t.cancel()
        # a worker reports its CPU since it started: this run's is the difference (a restarted
        # worker starts again from 0, so it counts from its restart: a lower bound after deaths)
        now_cpu = [s.get("cpu_seconds", 0.0) for s in self.worker_stats]
        worker_cpu = [c - b if c >= b else c for c, b in zip(now_cpu, self._cpu_base, strict=True)]
        self._cpu_base = now_cpu
        driver_cpu = time.thread_time() - cpu0
        return {
            "search_workers": len(self.workers),
            "nodes": nodes,
            "worker_cpu_seconds": [round(c, 3) for c in worker_cpu],
            "worker_cpu_us_per_node": round(1e6 * sum(worker_cpu) / nodes, 2) if nodes else 0.0,
            "driver_cpu_seconds": round(driver_cpu, 3),
            "driver_cpu_us_per_node": round(1e6 * driver_cpu / nodes, 2) if nodes else 0.0,
            "fleet_wall_seconds": round(time.perf_counter() - wall0, 3),
            "lost_attempts": self.lost_attempts,
            "resumed_from_journal": self.replayed,
            "lost_ledger": self.lost.to_dict(),
            "dispatch": merge_dispatch_stats([d for d in self.dispatch if d]),
        }

    async def _open_shared(self, problems: Sequence[Problem]) -> Any:
        """A tree store holding every problem's tree, when the job has fewer problems than
        workers and its algorithm has a tree-parallel search (``run.tree_parallel``); else None."""
        job = self.job
        if not (job.cfg.run.tree_parallel and job.algorithm.shared and len(problems) < len(self.workers)):
            return None
        store = TreeStoreActor.remote()
        await asyncio.gather(
            *(
                store.open.remote(
                    p.id,
                    p.prompt,
                    job.tokenizer.encode(p.prompt),
                    job.task.max_depth,
                    job.algorithm_config,
                    limited=bool(job.cfg.budget.limits()),
                )
                for p in problems
            )
        )
        self.stores.append(store)
        return store

    async def _finish_shared(
        self, store: Any, problem_id: str, ledger: Ledger, problems: Sequence[Problem]
    ) -> tuple[dict[str, Any], bytes]:
        """A shared tree whose last share is in: its answer, judged here, and the tree."""
        tree_bytes, node, stats = await store.finish.remote(problem_id)
        problem = next(p for p in problems if p.id == problem_id)
        result = evaluate(problem, self.job.task, Tree.from_msgpack(tree_bytes), node, ledger)
        return {**result.to_json(), "shared_tree": stats}, tree_bytes

    def _requeue(self, held: dict[str, Held], queue: deque[Held]) -> None:
        """A dead worker's problems back to the front of the queue (journals kept)."""
        for h in reversed(list(held.values())):
            self.lost_attempts += 1
            if h.journal:
                self.replayed += 1
            if h.in_flight:
                self.lost.add(Ledger.from_dict(h.in_flight))
            h.in_flight = {}
            queue.appendleft(h)
        held.clear()
