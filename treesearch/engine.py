"""The async search engine: many problems concurrently, their requests batched together.

Layering (after vLLM v1): the *engine* runs the loop, *algorithms* are the policy (they only
``await ctx.expand(...)`` / ``await ctx.score(...)``, :mod:`treesearch.context`), *backends*
are the transport, reached through one :class:`treesearch.batcher.Batcher`.

Each problem's search is an asyncio task in one of ``concurrency`` slots. Problems come from
a :class:`ProblemFeed`: all at once for a local run, or over time as a driver hands a search
worker its leases. A search commits results to its tree in the order it asked, so a run is
deterministic whatever order the backend answers in.

Failure isolation: an exception inside one problem's search (a task method that raises on
model text, a PRM answer of the wrong shape, a request that failed after its retries) marks
that problem ``failed`` with its error; the others go on. :class:`BackendUnavailable` (a pool
with no replica left) ends the job, and so does a job where more than ``max_failures``
problems failed (the error is then not about one problem).
"""

from __future__ import annotations

import asyncio
import gc
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from treesearch.batcher import Batcher
from treesearch.budget import Budget, BudgetGuard, Ledger, ModelCost
from treesearch.context import JournalEntry, ReplayDiverged, SearchContext
from treesearch.pool import JobPool, pooled_search
from treesearch.protocol import BackendUnavailable, Generator, Scorer
from treesearch.sizing import StepCost
from treesearch.stopping import StopRule
from treesearch.store import TreeStore
from treesearch.tasks.base import Problem, Task
from treesearch.tree import Tree

OK, FAILED, PART = "ok", "failed", "part"  # part: one worker's share of a shared tree
GC_YOUNG = 20_000  # allocations between young-generation collections while searching


class JobFailed(RuntimeError):
    """More problems failed than the job allows: the cause is not one problem."""


class Lease(NamedTuple):
    """A problem handed to an engine, with the journal of an earlier attempt to replay; or, with
    ``store``, a share of a tree several workers search (:mod:`treesearch.shared_tree`)."""

    problem: Problem
    journal: tuple[JournalEntry, ...] = ()
    store: Any = None


class ProblemFeed:
    """Problems handed to an engine over time; ``close()`` says no more will come."""

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
        """The next problem, waiting for one; None once the feed is closed and empty."""
        while not self._items and not self.closed:
            assert self._arrived is not None
            self._arrived.clear()
            await self._arrived.wait()
        return self.take()


@dataclass
class ProblemResult:
    """One problem's outcome. ``covered``: some terminal node of the tree is correct.
    ``status``: ``ok``, or ``failed`` with ``error`` (then nothing else is meaningful but the
    compute spent)."""

    id: str
    answer: str | None
    answer_node: int | None
    correct: bool
    covered: bool
    nodes: int
    ledger: Ledger
    answer_score: float | None = None
    status: str = OK
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        row = {
            "id": self.id,
            "status": self.status,
            "answer": self.answer,
            "answer_node": self.answer_node,
            "answer_score": self.answer_score,
            "correct": self.correct,
            "covered": self.covered,
            "nodes": self.nodes,
            "ledger": self.ledger.to_dict(),
        }
        if self.error is not None:
            row["error"] = self.error
        return row


SearchFn = Callable[[SearchContext], Awaitable[int | None]]
SharedSearchFn = Callable[[SearchContext, Any], Awaitable[None]]


def evaluate(
    problem: Problem, task: Task, tree: Tree, answer_node: int | None, ledger: Ledger
) -> ProblemResult:
    """Ground-truth evaluation of a finished tree (the search has already chosen)."""
    correct = answer_node is not None and task.is_correct(problem, tree.steps(answer_node))
    covered = correct or any(task.is_correct(problem, tree.steps(n)) for n in tree.terminals())
    score = None
    if answer_node is not None and not math.isnan(tree.prm_score[answer_node]):
        score = tree.prm_score[answer_node]
    return ProblemResult(
        id=problem.id,
        answer=None if answer_node is None else tree.answer[answer_node],
        answer_node=answer_node,
        correct=correct,
        covered=covered,
        nodes=len(tree) - 1,
        ledger=ledger,
        answer_score=score,
    )


def _step_tokens(task: Task, generator: Generator, max_step_tokens: int) -> float:
    """Expected generated tokens of a step (budget sizing): the task's example steps in the
    generator's tokens, else half the step cap."""
    examples = getattr(task, "example_steps", ())
    if not examples:
        return max_step_tokens / 2
    return min(max_step_tokens, sum(len(generator.tokenize(s)) for s in examples) / len(examples))


def _head_tokens(task: Task, generator: Generator) -> int:
    """Generated tokens of the task's step head (``Task.step_head``, e.g. Game of 24's
    ``4 + 8 =``) in the generator's tokens; 0 when the task names none."""
    head = getattr(task, "step_head", "")
    return len(generator.tokenize(head)) if head else 0


def failed(problem: Problem, error: BaseException, tree: Tree, ledger: Ledger) -> ProblemResult:
    """A problem whose search raised: its error, and the compute it spent."""
    return ProblemResult(
        id=problem.id,
        answer=None,
        answer_node=None,
        correct=False,
        covered=False,
        nodes=len(tree) - 1,
        ledger=ledger,
        status=FAILED,
        error=f"{type(error).__name__}: {error}",
    )


@dataclass
class EngineCounters:
    """What one engine run did. ``cpu_seconds``: CPU time of the thread running the loop
    (the engine, the algorithms, the transports' client side), so ``cpu_us_per_node`` is the
    orchestration cost of a tree node."""

    generator_batches: int = 0
    prm_batches: int = 0
    nodes: int = 0
    cpu_seconds: float = 0.0
    failed: int = 0
    replayed: int = 0
    replay_restarts: int = 0

    @property
    def cpu_us_per_node(self) -> float:
        return 1e6 * self.cpu_seconds / self.nodes if self.nodes else 0.0

    def to_dict(self) -> dict[str, float]:
        return {
            "generator_batches": self.generator_batches,
            "prm_batches": self.prm_batches,
            "engine_nodes": self.nodes,
            "engine_cpu_seconds": round(self.cpu_seconds, 4),
            "engine_cpu_us_per_node": round(self.cpu_us_per_node, 2),
            "failed": self.failed,
            "replayed": self.replayed,
            "replay_restarts": self.replay_restarts,
        }


async def run_problems(
    problems: Sequence[Problem] | ProblemFeed,
    task: Task,
    search: SearchFn,
    generator: Generator,
    scorer: Scorer,
    budget: Budget,
    max_step_tokens: int,
    concurrency: int = 64,
    on_result: Callable[[ProblemResult, Tree], None] | None = None,
    lockstep: bool = False,
    max_failures: int | None = None,
    store: TreeStore | None = None,
    record: bool = False,
    shared_search: SharedSearchFn | None = None,
) -> tuple[list[ProblemResult], Ledger, EngineCounters]:
    """Runs ``search`` on every problem, ``concurrency`` at a time, batching their requests.

    Returns the results (in ``problems`` order for a sequence, in finishing order for a
    feed), the job ledger and the engine's counters. ``on_result`` is called as each problem
    finishes (streaming output). ``store`` holds the trees while they are searched (a worker
    snapshots it); with ``record`` each problem's journal is kept there too. ``lockstep``
    runs the baseline that advances every problem one request at a time, waiting for the
    whole batch (the pattern of search-and-learn / OpenR), for benchmarks. A lease with a
    ``store`` runs ``shared_search`` on the shared tree and ends as a ``part`` result (its
    compute; the tree and the answer are the store's).

    ``budget.early_stop`` ends a problem's search once its stop rule is met
    (:mod:`treesearch.stopping`); ``budget.scope: job`` makes the budget one pool over every
    problem (:mod:`treesearch.pool`: all of them are searched at once, in rounds).
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    stop = StopRule(budget, task)
    pool = None
    if budget.scope == "job":
        if isinstance(problems, ProblemFeed):
            raise ValueError("budget.scope job needs the job's problems up front (not a feed of leases)")
        pool = JobPool(budget, [p.id for p in problems])
        concurrency = max(concurrency, len(problems))  # a pool's barrier waits for every problem
    step_tokens = _step_tokens(task, generator, max_step_tokens)
    head_tokens = _head_tokens(task, generator)
    gc.freeze()  # setup's objects (solver memo tables, datasets) never enter a GC pass again
    # Requests and answers are short-lived: a larger young generation lets them die by
    # refcount before a collection walks them (~15% of the engine's CPU at 700).
    thresholds = gc.get_threshold()
    gc.set_threshold(max(thresholds[0], GC_YOUNG), *thresholds[1:])
    cpu0 = time.thread_time()
    feed = problems if isinstance(problems, ProblemFeed) else ProblemFeed(problems, closed=True)
    order = {} if isinstance(problems, ProblemFeed) else {p.id: i for i, p in enumerate(problems)}
    store = store if store is not None else TreeStore()
    batcher = Batcher(generator, scorer, lockstep=lockstep)
    cost = ModelCost(generator.num_parameters, scorer.num_parameters)
    counters = EngineCounters()
    started = time.perf_counter()
    results: list[ProblemResult] = []

    async def attempt(lease: Lease, replay: Sequence[JournalEntry]) -> tuple[ProblemResult, Tree]:
        problem = lease.problem
        guard = BudgetGuard(budget)
        if pool is not None:
            guard.set_limit(pool.unit, pool.first_round(problem.id))
        prompt_ids = generator.tokenize(problem.prompt)
        tree = store.open(problem.id, problem.prompt, prompt_ids, record, guard)
        depth = min(getattr(task, "expected_depth", task.max_depth), task.max_depth)
        ctx = SearchContext(
            problem, task, tree, batcher, guard, cost, max_step_tokens, scorer.counter,
            store.journal(problem.id), replay, stop,
            StepCost(step_tokens, max_step_tokens, len(prompt_ids), depth, head_tokens),
        )  # fmt: skip
        try:
            if lease.store is not None:
                if shared_search is None:
                    raise ValueError("this algorithm has no tree-parallel search")
                await shared_search(ctx, lease.store)
                ctx.tick()
                return ProblemResult(problem.id, None, None, False, False, 0, ctx.ledger, status=PART), tree
            if pool is None:
                node = await search(ctx)
            else:
                node = await pooled_search(pool, ctx, lambda: search(ctx))
            if ctx.settled is not None:  # stopped early: the settled chain is the answer
                node = ctx.settled
                ctx.ledger.early_stops = 1
                unit = pool.unit if pool is not None else budget.unit()
                ctx.ledger.budget_returned = max(0.0, guard.left(unit)) if unit is not None else 0.0
            ctx.tick()
            return evaluate(problem, task, tree, node, ctx.ledger), tree
        except (BackendUnavailable, ReplayDiverged):
            raise
        except Exception as e:  # this problem fails; the job goes on
            ctx.tick()
            return failed(problem, e, tree, ctx.ledger), tree
        finally:
            if pool is not None:
                pool.finish(problem.id, guard.spent.value(pool.unit))

    async def run_one(lease: Lease) -> None:
        if lease.journal:
            counters.replayed += 1
            try:
                result, tree = await attempt(lease, lease.journal)
            except ReplayDiverged:  # e.g. a wall-seconds budget: start the problem afresh
                counters.replay_restarts += 1
                store.close(lease.problem.id)
                result, tree = await attempt(lease, ())
        else:
            result, tree = await attempt(lease, ())
        counters.nodes += result.nodes
        results.append(result)
        if on_result is not None:
            on_result(result, tree)
        store.close(result.id)
        if result.status == FAILED:
            counters.failed += 1
            if max_failures is not None and counters.failed > max_failures:
                raise JobFailed(
                    f"{counters.failed} problems failed (more than {max_failures}); last: {result.error}"
                )

    async def slot() -> None:
        # A slot takes its next problem without yielding to the event loop when one is
        # there, so the batcher's count of running searches stays exact between problems.
        try:
            while True:
                lease = feed.take()
                if lease is None:
                    if feed.closed:
                        return
                    batcher.park()
                    lease = await feed.wait()
                    if lease is None:
                        batcher.active += 1  # balanced by the finally below
                        return
                    batcher.unpark()
                await run_one(lease)
        finally:
            batcher.search_finished()

    batcher.active = concurrency
    slots = [asyncio.ensure_future(slot()) for _ in range(concurrency)]
    try:
        done, _ = await asyncio.wait(slots, return_when=asyncio.FIRST_EXCEPTION)
        for t in done:
            if t.exception() is not None:
                raise t.exception()  # a job-level failure: the other searches are cancelled
    finally:
        for t in slots:
            t.cancel()
        counters.generator_batches = batcher.generator_batches
        counters.prm_batches = batcher.scorer_batches
        counters.cpu_seconds = time.thread_time() - cpu0
        gc.set_threshold(*thresholds)
    job = Ledger()
    for r in results:
        job.add(r.ledger)
    job.wall_seconds = time.perf_counter() - started
    if order:
        results.sort(key=lambda r: order[r.id])
    return results, job, counters
