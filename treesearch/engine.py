"""The async search engine: many problems concurrently, their requests batched together.

Layering (after vLLM v1): the *engine* runs the loop, *algorithms* are the policy (they only
``await ctx.expand(...)`` / ``await ctx.score(...)``), *backends* are the transport.

Each problem's search is an asyncio task. Its requests go to a :class:`Batcher`, which sends
everything pending as soon as every running search is waiting (on pending or in-flight
work): no lockstep barrier across problems, and one backend call carries the requests of
every problem that was ready. A search commits results to its tree in the order it asked,
so a run is deterministic whatever order the backend answers in.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from treesearch.budget import Budget, BudgetGuard, Ledger, ModelCost
from treesearch.protocol import (
    ExpandRequest,
    ExpandResult,
    GeneratedStep,
    Generator,
    Scorer,
    ScoreRequest,
    ScoreResult,
)
from treesearch.tasks.base import Problem, Task
from treesearch.tree import ROOT, TERMINAL, Step, Tree


class Batcher:
    """Collects requests from all running searches; flushes when none can add more.

    ``active`` counts searches running, ``waiting`` those whose latest submission still
    has unanswered requests. When ``waiting == active`` nothing more can be added before
    some result arrives, so every pending request is sent, in chunks of at most
    ``max_batch``. ``waiting`` drops the moment a submission's last result is delivered
    (not when its search resumes), so searches woken by one batch are all counted as
    runnable and their next requests travel together.
    """

    def __init__(self, generator: Generator, scorer: Scorer, max_batch: int = 4096, lockstep: bool = False):
        self.generator, self.scorer, self.max_batch = generator, scorer, max_batch
        self.lockstep = lockstep  # baseline for benchmarks: one batch in flight at a time
        self.active = 0
        self.waiting = 0
        self.generator_batches = 0
        self.scorer_batches = 0
        self._gen: list[_Pending] = []
        self._score: list[_Pending] = []
        self._inflight: set[asyncio.Task] = set()

    async def generate(self, requests: Sequence[ExpandRequest]) -> list[ExpandResult]:
        return await self._submit(self._gen, requests)

    async def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        return await self._submit(self._score, requests)

    async def _submit(self, queue: list[_Pending], requests: Sequence[Any]) -> list[Any]:
        if not requests:
            return []
        loop = asyncio.get_running_loop()
        ticket = [len(requests)]  # unanswered requests of this submission
        futures = [loop.create_future() for _ in requests]
        queue.extend(_Pending(r, f, ticket) for r, f in zip(requests, futures, strict=True))
        self.waiting += 1
        self._maybe_flush()
        return list(await asyncio.gather(*futures))

    def search_finished(self) -> None:
        self.active -= 1
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        if self.waiting < self.active or (self.lockstep and self._inflight):
            return
        for queue, call in ((self._gen, self.generator.generate), (self._score, self.scorer.score)):
            while queue:
                chunk, queue[:] = queue[: self.max_batch], queue[self.max_batch :]
                if queue is self._gen:
                    self.generator_batches += 1
                else:
                    self.scorer_batches += 1
                task = asyncio.ensure_future(self._resolve(call, chunk))
                self._inflight.add(task)
                task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task) -> None:
        self._inflight.discard(task)
        if self.lockstep:  # the barrier lifts when the last batch of a step returns
            self._maybe_flush()

    async def _resolve(self, call: Callable[[list], Awaitable[list]], chunk: list[_Pending]) -> None:
        try:
            results = await call([p.request for p in chunk])
            if len(results) != len(chunk):
                raise RuntimeError(f"backend returned {len(results)} results for {len(chunk)} requests")
        except BaseException as e:  # hand the failure to every waiting search
            results, error = None, e
        else:
            error = None
        for i, p in enumerate(chunk):
            if p.future.done():  # its search was cancelled (a sibling failed, or shutdown)
                pass
            elif error is not None:
                p.future.set_exception(error)
            else:
                p.future.set_result(results[i])
            p.ticket[0] -= 1
            if p.ticket[0] == 0:
                self.waiting -= 1


@dataclass(slots=True)
class _Pending:
    request: Any
    future: asyncio.Future
    ticket: list[int]


@dataclass
class SearchContext:
    """Everything an algorithm may touch: its tree, its problem, and two asks.

    Attributes:
      tree: the problem's search tree (the algorithm reads it and calls its MCTS ops).
      exhausted: set once the budget refused (part of) a request; algorithms then finish
        with what the tree holds.
    """

    problem: Problem
    task: Task
    tree: Tree
    batcher: Batcher
    guard: BudgetGuard
    cost: ModelCost
    max_step_tokens: int
    exhausted: bool = False
    _started: float = field(default_factory=time.perf_counter)
    _expansions: dict[int, int] = field(default_factory=dict)

    @property
    def ledger(self) -> Ledger:
        return self.guard.spent

    @property
    def question(self) -> str | None:
        """The raw question for PRM inputs (tasks with chat-templated prompts set it)."""
        return self.problem.data.get("question")

    def _tick(self) -> None:
        self.guard.spent.wall_seconds = time.perf_counter() - self._started

    def expandable(self, node: int) -> bool:
        return self.tree.status[node] != TERMINAL and self.tree.depth[node] < self.task.max_depth

    async def expand(self, nodes: Sequence[int], k: int | Sequence[int]) -> list[list[int]]:
        """Expands each node by one step, ``k`` samples each; returns the new child ids.

        A node whose request the budget cannot afford gets fewer samples, or none (then
        ``exhausted`` is set). Terminal nodes and nodes at the task's depth limit get none.
        The same node may appear several times (independent samples each time).
        """
        ks = [k] * len(nodes) if isinstance(k, int) else list(k)
        asks = [(n, (), want) for n, want in zip(nodes, ks, strict=True) if want > 0 and self.expandable(n)]
        results = iter(await self._generate(asks))
        children: list[list[int]] = []
        for n, want in zip(nodes, ks, strict=True):
            res = next(results) if want > 0 and self.expandable(n) else None
            children.append([] if res is None else self._commit_expansion(n, res))
        return children

    async def continue_chains(
        self, chains: Sequence[tuple[int, Sequence[GeneratedStep]]]
    ) -> list[GeneratedStep | None]:
        """One more sampled step for each (tree node, steps after it outside the tree).

        For rollouts: nothing is added to the tree, the cost is booked. None where the
        budget refused.
        """
        results = await self._generate([(n, tuple(extra), 1) for n, extra in chains])
        return [None if r is None or not r.samples else r.samples[0] for r in results]

    async def _generate(
        self, asks: Sequence[tuple[int, tuple[GeneratedStep, ...], int]]
    ) -> list[ExpandResult | None]:
        """Reserves, sends and settles generation requests; None where the budget refused."""
        self._tick()
        delim = self.task.step_delimiter
        plans: list[tuple[int, ExpandRequest, Ledger]] = []
        for i, (node, extra, want) in enumerate(asks):
            prompt_ids = tuple(self.tree.prefix_token_ids(node)) + tuple(
                t for s in extra for t in s.token_ids
            )
            for n in range(want, 0, -1):  # as many samples as the budget affords
                worst = self._worst_generation(len(prompt_ids), n)
                if self.guard.reserve(worst):
                    break
                self.exhausted = True
            else:
                continue
            steps = [*self.tree.steps(node), *(s.text for s in extra)]
            prompt_text = self.tree.step_text[ROOT] + "".join(s + delim for s in steps)
            key = (node, len(extra))
            nonce = self._expansions.get(key, 0)
            self._expansions[key] = nonce + 1
            req = ExpandRequest(
                self.problem.id, node, prompt_text, prompt_ids, n, self.max_step_tokens, delim, nonce
            )
            plans.append((i, req, worst))
        out: list[ExpandResult | None] = [None] * len(asks)
        if plans:
            results = await self.batcher.generate([req for _, req, _ in plans])
            for (i, _, worst), res in zip(plans, results, strict=True):
                self.guard.settle(worst, self._generation_cost(res, 0 if asks[i][1] else len(res.samples)))
                out[i] = res
        self._tick()
        return out

    def _worst_generation(self, prompt_tokens: int, k: int) -> Ledger:
        gen = k * self.max_step_tokens
        prefill, decode = self.cost.generation(prompt_tokens, 0, gen)
        return Ledger(
            policy_prompt_tokens=prompt_tokens,
            policy_generated_tokens=gen,
            generator_calls=1,
            nodes=k,
            policy_prefill_flops=prefill,
            policy_decode_flops=decode,
        )

    def _generation_cost(self, res: ExpandResult, nodes: int) -> Ledger:
        prefill, decode = self.cost.generation(
            res.prompt_tokens, res.cached_prompt_tokens, res.generated_tokens
        )
        return Ledger(
            policy_prompt_tokens=res.prompt_tokens,
            policy_cached_prompt_tokens=res.cached_prompt_tokens,
            policy_generated_tokens=res.generated_tokens,
            generator_calls=1,
            nodes=nodes,
            policy_prefill_flops=prefill,
            policy_decode_flops=decode,
        )

    def _commit_expansion(self, node: int, res: ExpandResult) -> list[int]:
        base = self.tree.steps(node)
        steps = []
        for s in res.samples:
            chain = [*base, s.text]
            terminal = (
                s.finish_reason == "eos"
                or self.task.is_terminal(self.problem, chain)
                or len(chain) >= self.task.max_depth
            )
            steps.append(Step(s.text, s.token_ids, s.logprob, terminal))
        ids = self.tree.add_children(node, steps, res.replica)
        for child, step in zip(ids, steps, strict=True):
            if step.terminal:
                self.tree.answer[child] = self.task.extract_answer(self.problem, [*base, step.text])
        return ids

    async def score(self, nodes: Sequence[int]) -> list[float]:
        """PRM scores of each node's last step, in [0, 1] (NaN/inf mapped to 0 and counted).

        Already-scored nodes are not sent again. Scores of every step on the chain are
        written into the tree. Nodes the budget cannot afford keep NaN (``exhausted`` set).
        """
        todo = [n for n in dict.fromkeys(nodes) if n != ROOT and math.isnan(self.tree.prm_score[n])]
        reqs = [
            ScoreRequest(
                self.problem.id, n, self.tree.step_text[ROOT], tuple(self.tree.steps(n)), self.question
            )
            for n in todo
        ]
        for node, scores in zip(todo, await self.score_chains(reqs), strict=True):
            if scores is not None:
                path = self.tree.path(node)[1:]
                for n, sc in zip(path, scores, strict=True):
                    if math.isnan(self.tree.prm_score[n]):
                        self.tree.prm_score[n] = sc
        return [self.tree.prm_score[n] if n != ROOT else 1.0 for n in nodes]

    async def score_chains(self, requests: Sequence[ScoreRequest]) -> list[tuple[float, ...] | None]:
        """Step scores of explicit chains (clamped to [0, 1]; NaN/inf -> 0, counted).

        Nothing is written to the tree. None where the budget refused.
        """
        self._tick()
        plans: list[tuple[int, Ledger]] = []
        for i, req in enumerate(requests):
            tokens = self.batcher.scorer.count_tokens(req)
            worst = Ledger(prm_tokens=tokens, prm_calls=1, prm_flops=self.cost.scoring(tokens))
            if self.guard.reserve(worst):
                plans.append((i, worst))
            else:
                self.exhausted = True
        out: list[tuple[float, ...] | None] = [None] * len(requests)
        if plans:
            results = await self.batcher.score([requests[i] for i, _ in plans])
            for (i, worst), res in zip(plans, results, strict=True):
                if len(res.step_scores) != len(requests[i].steps):
                    raise RuntimeError(
                        f"PRM returned {len(res.step_scores)} scores for a "
                        f"{len(requests[i].steps)}-step chain"
                    )
                clean = tuple(min(1.0, max(0.0, x)) if math.isfinite(x) else 0.0 for x in res.step_scores)
                bad = sum(not math.isfinite(x) for x in res.step_scores)
                actual = Ledger(
                    prm_tokens=res.tokens,
                    prm_calls=1,
                    prm_flops=self.cost.scoring(res.tokens),
                    nonfinite_scores=bad,
                )
                self.guard.settle(worst, actual)
                out[i] = clean
        self._tick()
        return out


@dataclass
class ProblemResult:
    """One problem's outcome. ``covered``: some terminal node of the tree is correct."""

    id: str
    answer: str | None
    answer_node: int | None
    correct: bool
    covered: bool
    nodes: int
    ledger: Ledger
    answer_score: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "answer": self.answer,
            "answer_node": self.answer_node,
            "answer_score": self.answer_score,
            "correct": self.correct,
            "covered": self.covered,
            "nodes": self.nodes,
            "ledger": self.ledger.to_dict(),
        }


SearchFn = Callable[[SearchContext], Awaitable[int | None]]


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


async def run_problems(
    problems: Sequence[Problem],
    task: Task,
    search: SearchFn,
    generator: Generator,
    scorer: Scorer,
    budget: Budget,
    max_step_tokens: int,
    concurrency: int = 64,
    on_result: Callable[[ProblemResult, Tree], None] | None = None,
    lockstep: bool = False,
) -> tuple[list[ProblemResult], Ledger, dict[str, int]]:
    """Runs ``search`` on every problem, ``concurrency`` at a time, batching their requests.

    Returns the results (in ``problems`` order), the job ledger, and batch counters.
    ``on_result`` is called as each problem finishes (for streaming output). ``lockstep``
    runs the baseline that advances every problem one request at a time, waiting for the whole
    batch (the pattern of search-and-learn / OpenR), for benchmarks.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    batcher = Batcher(generator, scorer, lockstep=lockstep)
    cost = ModelCost(generator.num_parameters, scorer.num_parameters)
    started = time.perf_counter()
    results: list[ProblemResult | None] = [None] * len(problems)
    queue = iter(enumerate(problems))

    async def worker() -> None:
        # A worker takes its next problem without yielding to the event loop, so the
        # batcher's count of running searches stays exact between problems.
        try:
            for i, problem in queue:
                tree = Tree(problem.prompt, generator.tokenize(problem.prompt), problem.id)
                ctx = SearchContext(problem, task, tree, batcher, BudgetGuard(budget), cost, max_step_tokens)
                node = await search(ctx)
                ctx._tick()
                results[i] = evaluate(problem, task, tree, node, ctx.ledger)
                if on_result is not None:
                    on_result(results[i], tree)
        finally:
            batcher.search_finished()

    n_workers = min(concurrency, len(problems))
    batcher.active = n_workers
    await asyncio.gather(*(worker() for _ in range(n_workers)))
    job = Ledger()
    for r in results:
        assert r is not None
        job.add(r.ledger)
    job.wall_seconds = time.perf_counter() - started
    counters = {"generator_batches": batcher.generator_batches, "prm_batches": batcher.scorer_batches}
    return [r for r in results if r is not None], job, counters
