"""The driver's side of search workers: hand out problems, merge results, survive deaths.

:class:`WorkerFleet` keeps one :meth:`SearchWorker.step` call outstanding per worker; each
reply brings finished problems (written to the run dir by the runner, each exactly once),
journal deltas of the problems the worker holds, and how many more it can take, which the
next call hands it (at most ``run.lease`` at a time, so the tail of a job spreads over the
workers: work stealing by small pulls; and, once the queue runs short, no more than the
worker's share of it by its pace, so a worker that falls behind takes fewer of the last
problems: :class:`treesearch.feed.FinishRates`).

When a job has fewer problems than workers (and its algorithm has a tree-parallel search:
MCTS), the workers share each problem's tree through a :class:`actors.shared_tree.SharedTreeActor`
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
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from actors.clients import merge_dispatch_stats
from actors.search_worker import SearchWorker
from actors.shared_tree import SharedTreeActor
from treesearch.budget import Ledger
from treesearch.engine import first_error
from treesearch.feed import FinishRates, Lease
from treesearch.job import Job
from treesearch.plane import OnRow
from treesearch.results import FailureLimit, evaluate
from treesearch.tasks.base import Problem
from treesearch.tree import Tree


class WorkerFleet:
    """``workers`` search workers for one job (see module docstring).

    Attributes:
      held: per worker, the leases it holds now (by problem id).
      pace: each worker's problems finished per second in this run, which caps its pulls.
      lost_attempts, replayed: leases lost with a dead worker, and of those, resumed from a journal.
      lost: the compute lost leases had in flight when last reported (worst cases).
    """

    def __init__(self, job: Job, replicas: Any, workers: int, max_restarts: int = 3, wait_s: float = 0.5):
        self.job, self.wait_s, self.max_restarts = job, wait_s, max_restarts
        self.workers = [
            SearchWorker.options(max_restarts=max_restarts, max_task_retries=0, num_cpus=0).remote(
                job.cfg, job.sections, replicas, i
            )
            for i in range(workers)
        ]
        self.lost_attempts = self.replayed = 0
        self.pace = FinishRates(workers, job.cfg.run.concurrency)
        self.lost = Ledger()
        self.held: list[dict[str, Lease]] = [{} for _ in self.workers]
        self.shared_trees: list[Any] = []  # actors of tree-parallel searches
        self.worker_stats: list[dict[str, Any]] = [{} for _ in self.workers]
        self.dispatch: list[dict[str, Any]] = [{} for _ in self.workers]
        self._cpu_base = [0.0] * len(self.workers)  # each worker's CPU seconds at the last run's end
        self._nodes_base = [0] * len(self.workers)  # each worker's nodes at the last run's end
        self._queue: deque[Lease] = deque()
        self._shares: dict[str, tuple[int, Ledger]] = {}  # a shared tree's shares out, their compute
        self._remaining = self._nodes = 0

    def shutdown(self) -> None:
        for w in [*self.workers, *self.shared_trees]:
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

    async def run(self, problems: Sequence[Problem], on_row: OnRow, failures: FailureLimit) -> dict[str, Any]:
        """Searches every problem once on the workers; returns the fleet's counters."""
        cpu0, wall0 = time.thread_time(), time.perf_counter()
        shared = await self._open_shared(problems)
        if shared is None:
            self._queue = deque(Lease(p) for p in problems)
        else:  # fewer problems than workers: each worker searches a share of one tree
            self._queue = deque(
                Lease(problems[i % len(problems)], shared=shared) for i in range(len(self.workers))
            )
            self._shares = {p.id: (0, Ledger()) for p in problems}
        self._remaining, self._nodes = len(problems), 0
        self.held = [{} for _ in self.workers]
        self.pace = FinishRates(len(self.workers), self.job.cfg.run.concurrency)
        gone: set[int] = set()
        await first_error(
            [self._drive(i, problems, on_row, failures, gone) for i in range(len(self.workers))]
        )
        return self._counters(cpu0, wall0)

    async def _drive(
        self, i: int, problems: Sequence[Problem], on_row: OnRow, failures: FailureLimit, gone: set[int]
    ) -> None:
        """Keeps worker ``i`` busy until every problem is done (or it is gone for good)."""
        lease_size, losses = self.job.cfg.run.lease, 0
        want = self.job.cfg.run.concurrency + lease_size
        while self._remaining > 0:
            leases = self._hand_out(
                i, self.pace.cap(i, min(want, lease_size), len(self._queue), frozenset(gone))
            )
            if leases:
                self.pace.handed(i)
            try:
                reply = await self.workers[i].step.remote(leases, self.wait_s)
            except RayTaskError as e:  # the worker's engine hit a job-level error
                raise e.as_instanceof_cause() from None
            except RayActorError as e:  # the worker died: its problems go back, journals kept
                await self._take_back(i)
                if e.actor_init_failed:
                    raise RuntimeError(f"search worker {i} failed to start: {e}") from e
                losses += 1
                if 0 <= self.max_restarts < losses:  # Ray will not bring it back (-1: always does)
                    gone.add(i)
                    if len(gone) == len(self.workers):
                        raise RuntimeError(
                            f"every search worker died ({self.max_restarts} restarts each): {e}"
                        ) from e
                    return
                await asyncio.sleep(0.5)  # Ray restarts it; the next call waits for that
                want = self.job.cfg.run.concurrency + lease_size
                continue
            losses = 0
            for row, tree in reply["results"]:
                await self._finished(i, row, tree, problems, on_row, failures)
            self._telemetry(i, reply)
            want = reply["want"]

    def _hand_out(self, i: int, n: int) -> list[Lease]:
        """Up to ``n`` leases from the queue for worker ``i`` (never two shares of one tree)."""
        leases: list[Lease] = []
        for _ in range(len(self._queue)):
            if len(leases) >= n:
                break
            lease = self._queue.popleft()
            if lease.problem.id in self.held[i]:  # a second share of a tree it already searches
                self._queue.append(lease)
                continue
            self.held[i][lease.problem.id] = lease
            if lease.shared is not None:
                shares, ledger = self._shares[lease.problem.id]
                self._shares[lease.problem.id] = (shares + 1, ledger)
            leases.append(lease)
        return leases

    async def _finished(
        self, i: int, row: dict[str, Any], tree: bytes | None, problems: Sequence[Problem], on_row: OnRow,
        failures: FailureLimit,
    ) -> None:  # fmt: skip
        """A problem (or a share of a shared tree) worker ``i`` finished."""
        lease = self.held[i].pop(row["id"], None)
        if lease is None:
            return  # not this worker's (cannot happen; never written twice)
        self.pace.done(i)
        if lease.shared is not None:  # one share done (a failed share ends its part; the tree goes on)
            shares, ledger = self._shares[row["id"]]
            ledger.add(Ledger.from_dict(row["ledger"]))
            self._shares[row["id"]] = (shares - 1, ledger)
            if shares - 1 or any(q.problem.id == row["id"] for q in self._queue):
                return
            row, tree = await self._finish_shared(lease.shared, row["id"], ledger, problems)
        self._remaining -= 1
        self._nodes += row["nodes"]
        on_row(row, tree)
        failures.count(row.get("status", "ok"), row.get("error"))

    def _telemetry(self, i: int, reply: dict[str, Any]) -> None:
        held = self.held[i]
        for pid, chunk in reply["journals"].items():
            if pid in held:
                held[pid].journal.append(chunk)
        for pid, in_flight in (reply["in_flight"] or {}).items():
            if pid in held:
                held[pid].in_flight = in_flight
        self.worker_stats[i] = {"nodes": reply["nodes"], "cpu_seconds": reply["cpu_seconds"]}
        if reply["dispatch"] is not None:
            self.dispatch[i] = reply["dispatch"]

    async def _take_back(self, i: int) -> None:
        """A dead worker's leases back to the front of the queue (journals kept)."""
        held = self.held[i]
        for pid, lease in held.items():
            if lease.shared is not None:  # its selections in flight will never be committed
                shares, ledger = self._shares[pid]
                self._shares[pid] = (shares - 1, ledger)
                await lease.shared.abandon.remote(pid, f"w{i}")
        for lease in reversed(list(held.values())):
            self.lost_attempts += 1
            self.replayed += bool(lease.journal)
            if lease.in_flight:
                self.lost.add(Ledger.from_dict(lease.in_flight))
            lease.in_flight = {}
            self._queue.appendleft(lease)
        held.clear()

    def _counters(self, cpu0: float, wall0: float) -> dict[str, Any]:
        # a worker reports its CPU since it started: this run's is the difference (a restarted
        # worker starts again from 0, so it counts from its restart: a lower bound after deaths)
        now_cpu = [s.get("cpu_seconds", 0.0) for s in self.worker_stats]
        worker_cpu = [c - b if c >= b else c for c, b in zip(now_cpu, self._cpu_base, strict=True)]
        now_nodes = [s.get("nodes", 0) for s in self.worker_stats]
        worker_nodes = [c - b if c >= b else c for c, b in zip(now_nodes, self._nodes_base, strict=True)]
        self._cpu_base, self._nodes_base = now_cpu, now_nodes
        driver_cpu, nodes = time.thread_time() - cpu0, self._nodes
        return {
            "search_workers": len(self.workers),
            "nodes": nodes,
            "worker_cpu_seconds": [round(c, 3) for c in worker_cpu],
            "worker_nodes": worker_nodes,
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
        """An actor holding every problem's tree, when the job has fewer problems than workers
        and its algorithm has a tree-parallel search (``run.tree_parallel``); else None."""
        job = self.job
        if not (job.cfg.run.tree_parallel and job.algorithm.shared and len(problems) < len(self.workers)):
            return None
        shared = SharedTreeActor.remote()
        await asyncio.gather(*(
            shared.open.remote(p.id, p.prompt, job.tokenizer.encode(p.prompt), job.task.max_depth,
                               job.algorithm_config, limited=bool(job.cfg.budget.limits()))
            for p in problems
        ))  # fmt: skip
        self.shared_trees.append(shared)
        return shared

    async def _finish_shared(
        self, shared: Any, problem_id: str, ledger: Ledger, problems: Sequence[Problem]
    ) -> tuple[dict[str, Any], bytes]:
        """A shared tree whose last share is in: its answer, judged here, and the tree."""
        tree_bytes, node, stats = await shared.finish.remote(problem_id)
        problem = next(p for p in problems if p.id == problem_id)
        result = evaluate(problem, self.job.task, Tree.from_msgpack(tree_bytes), node, ledger)
        return {**result.to_json(), "shared_tree": stats}, tree_bytes
