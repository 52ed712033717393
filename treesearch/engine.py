"""The async search engine: many problems concurrently, their requests batched together.

Layering (after vLLM v1): the *engine* runs the loop, *algorithms* are the policy (they ask
through a :class:`~treesearch.context.SearchContext`: expand, score, sample ...), the
*transports* carry the requests, reached through one :class:`~treesearch.batcher.Batcher`.

Each problem's search is an asyncio task in one of ``concurrency`` slots, fed by a
:class:`~treesearch.feed.ProblemFeed` (all problems at once for a local run, leases over time
for a search worker, requests for a service). A search commits answers to its tree in the
order it asked, so a run is deterministic whatever order the transports answer in.

Failure isolation: an exception inside one problem's search (a task method that raises on
model text, a PRM answer of the wrong shape, a request that failed after its retries) marks
that problem ``failed`` with its error; the others go on. :class:`BackendUnavailable` (a pool
with no replica left) ends the run, and so does a job past its
:class:`~treesearch.results.FailureLimit`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from treesearch.batcher import Batcher
from treesearch.budget import Budget, BudgetGuard, Ledger, ModelCost
from treesearch.chains import ChainMemo
from treesearch.context import SearchContext
from treesearch.feed import Lease, ProblemFeed
from treesearch.job_budget import JobBudget, search_in_rounds
from treesearch.journal import Journal, ReplayDiverged, decode_journal
from treesearch.metered import MeteredClient
from treesearch.open_trees import OpenTrees
from treesearch.protocol import BackendUnavailable, Generator, Scorer
from treesearch.results import FAILED, FailureLimit, ProblemResult, evaluate, failed, part
from treesearch.sizing import StepCost
from treesearch.stopping import StopRule
from treesearch.tasks.base import Problem, Task
from treesearch.tree import Tree

GC_YOUNG = 20_000  # allocations between young-generation collections while searching

SearchFn = Callable[[SearchContext], Awaitable[int | None]]
SharedSearchFn = Callable[[SearchContext, Any], Awaitable[None]]
OnResult = Callable[[ProblemResult, Tree], None]


@dataclass(frozen=True)
class SearchSpec:
    """How a problem is searched: everything the engine needs besides the problem.

    Attributes:
      task: the problems' task.
      search: ``search(ctx) -> answer node``, the algorithm with its options.
      budget: the per-problem budget (``scope: job``: each problem's share of ``job_budget``).
      max_step_tokens: cap on generated tokens per step.
      stop: the early-stopping rule.
      step_tokens, head_tokens: a typical step's and its head's tokens in the generator's
        tokens (budget sizing, :mod:`treesearch.sizing`).
      depth: expected steps of a finished chain.
      shared_search: one worker's part of a tree-parallel search, if the algorithm has one.
      job_budget: the budget all problems share (``budget.scope: job``), else None.
      seed: folded into every request's nonce (a service request's own seed: other samples of
        the same prefixes where the generator samples by nonce); 0 for a job (its seed is the
        generator's).
    """

    task: Task
    search: SearchFn
    budget: Budget
    max_step_tokens: int
    stop: StopRule
    step_tokens: float
    head_tokens: int
    depth: int
    shared_search: SharedSearchFn | None = None
    job_budget: JobBudget | None = None
    seed: int = 0


def make_spec(
    task: Task, search: SearchFn, generator: Generator, budget: Budget, max_step_tokens: int,
    shared_search: SharedSearchFn | None = None,
) -> SearchSpec:  # fmt: skip
    """A :class:`SearchSpec`, its step sizes measured in ``generator``'s tokens: the task's
    example steps (else half the step cap) and its step head (else 0)."""
    examples = getattr(task, "example_steps", ())
    step = max_step_tokens / 2
    if examples:
        step = min(max_step_tokens, sum(len(generator.tokenize(s)) for s in examples) / len(examples))
    head = getattr(task, "step_head", "")
    depth = min(getattr(task, "expected_depth", task.max_depth), task.max_depth)
    return SearchSpec(task, search, budget, max_step_tokens, StopRule(budget, task), step,
                      len(generator.tokenize(head)) if head else 0, depth, shared_search)  # fmt: skip


@dataclass(frozen=True)
class EngineOptions:
    """How an engine runs.

    Attributes:
      concurrency: problems searched at once (their requests are batched together).
      lockstep: the benchmark baseline that advances every problem one request at a time,
        waiting for the whole batch (search-and-learn / OpenR's pattern).
      record: keep each problem's journal in the open trees (search workers: a problem can
        resume on another worker).
    """

    concurrency: int = 64
    lockstep: bool = False
    record: bool = False


@dataclass
class EngineCounters:
    """What an engine did. ``cpu_seconds``: CPU time of the thread running the loop (the
    engine, the algorithms, the transports' client side), so ``cpu_us_per_node`` is the
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


@contextlib.contextmanager
def tuned_gc() -> Iterator[None]:
    """While searching: what exists before (solver memo tables, datasets) is frozen out of GC
    passes, and the young generation is larger, so short-lived requests and answers die by
    refcount before a collection walks them (~15% of the engine's CPU at the default 700).
    Both are undone on exit (a long-lived worker or server does not freeze more each run)."""
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(max(thresholds[0], GC_YOUNG), *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


async def first_error(coros: Sequence[Coroutine[Any, Any, Any]]) -> None:
    """Runs ``coros`` until all are done; the first to raise cancels the others and its
    exception propagates."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for t in done:
            if t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
    finally:
        for t in tasks:
            t.cancel()


class Engine:
    """Searches the leases of a feed over one pair of transports (see module docstring).

    Attributes:
      trees: the trees being searched (a worker snapshots them; journals when recording).
      counters: what it did so far (over every run).
    """

    def __init__(self, generator: Generator, scorer: Scorer, options: EngineOptions = EngineOptions(),
                 trees: OpenTrees | None = None):  # fmt: skip
        self.options = options
        self.trees = trees if trees is not None else OpenTrees()
        self.batcher = Batcher(generator, scorer, lockstep=options.lockstep)
        self.tokenize, self.counter = generator.tokenize, scorer.counter
        self.cost = ModelCost(generator.num_parameters, scorer.num_parameters)
        self.counters = EngineCounters()

    async def run(self, feed: ProblemFeed, spec: SearchSpec, on_result: OnResult | None = None,
                  failures: FailureLimit | None = None) -> EngineCounters:  # fmt: skip
        """Searches every lease of ``feed`` (by ``spec``, or the lease's own) until the feed is
        closed and empty; ``on_result`` hears each problem as it finishes."""
        if spec.budget.scope == "job" and spec.job_budget is None:
            raise ValueError("budget.scope job needs the job's problems up front (run_problems)")
        slots = self.options.concurrency
        if spec.job_budget is not None:  # a job budget's barrier waits for every problem
            slots = max(slots, len(feed))
        cpu0 = time.thread_time()
        self.batcher.open_slots(slots)
        with tuned_gc():
            try:
                await first_error([self._slot(feed, spec, on_result, failures) for _ in range(slots)])
            finally:
                self.counters.cpu_seconds += time.thread_time() - cpu0
                self.counters.generator_batches = self.batcher.generator_batches
                self.counters.prm_batches = self.batcher.scorer_batches
        return self.counters

    async def _slot(self, feed: ProblemFeed, spec: SearchSpec, on_result: OnResult | None,
                    failures: FailureLimit | None) -> None:  # fmt: skip
        while (lease := await self.batcher.take(feed)) is not None:
            result, tree = await self.search(lease, lease.spec or spec)
            self.counters.nodes += result.nodes
            self.counters.failed += result.status == FAILED
            if on_result is not None:
                on_result(result, tree)
            self.trees.close(result.id)
            if failures is not None:
                failures.count(result.status, result.error)

    async def search_one(self, lease: Lease, spec: SearchSpec) -> tuple[ProblemResult, Tree]:
        """One search as a task of its own (a service request), batched with every other search
        of this engine; cancelling it drops its queued requests. Its tree is closed after."""
        self.batcher.open_slots(1)
        try:
            return await self.search(lease, spec)
        finally:
            self.batcher.park()
            self.trees.close(lease.problem.id)

    async def search(self, lease: Lease, spec: SearchSpec) -> tuple[ProblemResult, Tree]:
        """One problem: its journal replayed first if it has one (afresh if the replay diverges,
        e.g. under a wall-seconds budget)."""
        if not lease.journal:
            return await self._attempt(lease, spec, ())
        self.counters.replayed += 1
        try:
            return await self._attempt(lease, spec, decode_journal(b"".join(lease.journal)))
        except ReplayDiverged:
            self.counters.replay_restarts += 1
            self.trees.close(lease.problem.id)
            return await self._attempt(lease, spec, ())

    async def _attempt(
        self, lease: Lease, spec: SearchSpec, replay: Sequence[Any]
    ) -> tuple[ProblemResult, Tree]:
        problem, jb = lease.problem, spec.job_budget
        ctx = self._context(problem, spec, replay)
        try:
            if lease.shared is not None:
                if spec.shared_search is None:
                    raise ValueError("this algorithm has no tree-parallel search")
                await spec.shared_search(ctx, lease.shared)
                ctx.client.update_wall_time()
                return part(problem.id, ctx.ledger), ctx.tree
            node = await (
                spec.search(ctx) if jb is None else search_in_rounds(jb, ctx, lambda: spec.search(ctx))
            )
            node = self._answer(ctx, spec, node)
            result = evaluate(problem, spec.task, ctx.tree, node, ctx.ledger)
            result.stop_reason = self._stop_reason(ctx, spec)
            return result, ctx.tree
        except (BackendUnavailable, ReplayDiverged):
            raise
        except Exception as e:  # this problem fails; the others go on
            ctx.client.update_wall_time()
            return failed(problem, e, ctx.tree, ctx.ledger), ctx.tree
        finally:
            if jb is not None:
                jb.finish(problem.id, ctx.guard.spent.value(jb.unit))

    def _context(self, problem: Problem, spec: SearchSpec, replay: Sequence[Any]) -> SearchContext:
        guard = BudgetGuard(spec.budget)
        if spec.job_budget is not None:
            guard.set_limit(spec.job_budget.unit, spec.job_budget.first_round(problem.id))
        prompt_ids = self.tokenize(problem.prompt)
        tree, record = self.trees.open(problem.id, problem.prompt, prompt_ids, self.options.record, guard)
        journal = Journal(problem.id, record, replay)
        client = MeteredClient(problem.id, guard, self.cost, journal, self.batcher, spec.task.step_delimiter,
                               spec.max_step_tokens)  # fmt: skip
        chains = ChainMemo(tree, self.counter, problem.data.get("question") or problem.prompt, problem.prompt)
        step = StepCost(spec.step_tokens, spec.max_step_tokens, len(prompt_ids), spec.depth, spec.head_tokens)
        return SearchContext(problem, spec.task, tree, client, chains, step, spec.stop, spec.seed)

    @staticmethod
    def _stop_reason(ctx: SearchContext, spec: SearchSpec) -> str:
        """Why the search ended: its stop rule (``verified`` / ``threshold``), its budget, or
        its own shape (``complete``)."""
        if ctx.stopped_with is not None:
            return spec.stop.mode
        return "budget" if ctx.client.exhausted else "complete"

    @staticmethod
    def _answer(ctx: SearchContext, spec: SearchSpec, node: int | None) -> int | None:
        """The search's answer: the one its stop rule ended it with (what was left of the budget
        booked as returned), else the algorithm's."""
        if ctx.stopped_with is not None:
            node = ctx.stopped_with
            ctx.ledger.early_stops = 1
            unit = spec.job_budget.unit if spec.job_budget is not None else spec.budget.unit()
            ctx.ledger.budget_returned = max(0.0, ctx.guard.left(unit)) if unit is not None else 0.0
        ctx.client.update_wall_time()
        return node


async def run_problems(
    problems: Sequence[Problem], spec: SearchSpec, generator: Generator, scorer: Scorer,
    options: EngineOptions = EngineOptions(), on_result: OnResult | None = None,
    failures: FailureLimit | None = None,
) -> tuple[list[ProblemResult], Ledger, EngineCounters]:  # fmt: skip
    """Searches every problem of a list: their results in list order, the job's ledger and the
    engine's counters (``budget.scope: job``: the problems share one :class:`JobBudget`)."""
    if spec.budget.scope == "job":
        spec = dataclasses.replace(spec, job_budget=JobBudget(spec.budget, [p.id for p in problems]))
    results: list[ProblemResult] = []

    def done(result: ProblemResult, tree: Tree) -> None:
        results.append(result)
        if on_result is not None:
            on_result(result, tree)

    started = time.perf_counter()
    counters = await Engine(generator, scorer, options).run(
        ProblemFeed(problems, closed=True), spec, done, failures
    )
    order = {p.id: i for i, p in enumerate(problems)}
    results.sort(key=lambda r: order[r.id])
    ledger = Ledger()
    for r in results:
        ledger.add(r.ledger)
    ledger.wall_seconds = time.perf_counter() - started
    return results, ledger, counters
