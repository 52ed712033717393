"""What an algorithm may touch: its tree, its problem, and two asks (expand, score).

A :class:`SearchContext` turns an algorithm's asks into backend requests: it reserves each
request's worst case against the problem's budget, sends it through the engine's batcher,
books the real cost, and commits the answer to the tree. Algorithms never see a backend.

Every answer the search consumes can be recorded in a *journal* (the order the search used
them in). Replaying a journal into a fresh context reproduces the tree and the ledger exactly
without calling any backend (the algorithms are deterministic given their answers), then the
search carries on live: that is how a problem whose worker died resumes where it was.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

from treesearch.batcher import Batcher
from treesearch.budget import BudgetGuard, Costs, Ledger, ModelCost
from treesearch.protocol import (
    CountState,
    ExpandRequest,
    ExpandResult,
    GeneratedStep,
    ScoreRequest,
    TokenCounter,
    decode_ids,
    encode_ids,
)
from treesearch.sizing import Allowance, StepCost, allowance
from treesearch.stopping import StopRule
from treesearch.tasks.base import Problem, Task
from treesearch.tree import ROOT, TERMINAL, Step, Tree

GENERATE, SCORE = 0, 1  # journal entry kinds
T = TypeVar("T")

# A journal entry: (kind, the nodes asked about, the answers in that order).
JournalEntry = tuple[int, tuple[int, ...], tuple[Any, ...]]


class ReplayDiverged(RuntimeError):
    """A replayed search asked for something other than what its journal recorded."""


class SearchContext:
    """Everything an algorithm may touch.

    Attributes:
      problem, task: what is being solved.
      tree: the problem's search tree (the algorithm reads it and calls its MCTS ops).
      guard: the problem's budget (``guard.spent`` is its ledger).
      exhausted: set once the budget refused (part of) a request, or the search stopped
        early; algorithms then finish with what the tree holds.
      settled: the answer node once the stop rule ended the search (:mod:`treesearch.stopping`);
        every later ask is refused at no cost, and the engine answers with this node.
      journal: answers consumed so far, in order (None: not recorded).
    """

    def __init__(
        self,
        problem: Problem,
        task: Task,
        tree: Tree,
        batcher: Batcher,
        guard: BudgetGuard,
        cost: ModelCost,
        max_step_tokens: int,
        counter: TokenCounter,
        journal: list[JournalEntry] | None = None,
        replay: Sequence[JournalEntry] = (),
        stop: StopRule | None = None,
        step_cost: StepCost | None = None,
    ):
        self.problem, self.task, self.tree = problem, task, tree
        self.batcher, self.guard, self.cost = batcher, guard, cost
        self.max_step_tokens, self.counter = max_step_tokens, counter
        self.exhausted = False
        self.settled: int | None = None
        self.stop, self.step_cost = stop, step_cost
        self.journal = journal
        self._replay: deque[JournalEntry] = deque(replay)
        self._started = time.perf_counter()
        self._expansions: dict[tuple[int, int], int] = {}
        self._prefix: dict[int, bytes] = {ROOT: encode_ids(tree.token_ids[ROOT])}
        self._step_ids: dict[int, bytes] = {}  # a node's generated ids, as the generator sent them
        self._question = problem.data.get("question") or tree.step_text[ROOT]
        self._counts: dict[int, CountState] = {}
        self._steps: dict[int, tuple[str, ...]] = {ROOT: ()}
        self._heads: dict[int, set[bytes]] = {}  # step heads drawn per node (expand_distinct)

    @property
    def ledger(self) -> Ledger:
        return self.guard.spent

    @property
    def question(self) -> str:
        """What the PRM's format puts before the steps: the task's raw question, else the prompt."""
        return self._question

    @property
    def replaying(self) -> bool:
        return bool(self._replay)

    def tick(self) -> None:
        self.guard.spent.wall_seconds = time.perf_counter() - self._started

    async def outside(self, work: Awaitable[T]) -> T:
        """Awaits ``work`` that is not a backend request (a shared store's call, a pause): the
        search counts as waiting meanwhile, so the batcher does not hold other searches'
        requests for it."""
        self.batcher.park()
        try:
            return await work
        finally:
            self.batcher.unpark()

    def allowance(self) -> Allowance:
        """What the remaining budget affords, in step samples (:mod:`treesearch.sizing`)."""
        cap = self.max_step_tokens
        step = self.step_cost or StepCost(cap / 2, cap, 0, self.task.max_depth)
        return allowance(self.guard, step, self.cost)

    def settle(self, node: int) -> None:
        """Ends the search with ``node`` as its answer (the stop rule was met)."""
        if self.settled is None:
            self.settled = node
            self.exhausted = True

    def expandable(self, node: int) -> bool:
        return self.tree.status[node] != TERMINAL and self.tree.depth[node] < self.task.max_depth

    # ------------------------------------------------------------------ generation
    async def expand(self, nodes: Sequence[int], k: int | Sequence[int]) -> list[list[int]]:
        """Expands each node by one step, ``k`` samples each; returns the new child ids.

        A node whose request the budget cannot afford gets fewer samples, or none (then
        ``exhausted`` is set). Terminal nodes and nodes at the task's depth limit get none.
        The same node may appear several times (independent samples each time).
        """
        ks = [k] * len(nodes) if isinstance(k, int) else list(k)
        asks = [
            (n, self.prefix_ids(n), want, self._nonce(n, 0), True)
            for n, want in zip(nodes, ks, strict=True)
            if want > 0 and self.expandable(n)
        ]
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
        asks = [
            (
                n,
                self.prefix_ids(n) + b"".join(s.token_ids for s in extra),
                1,
                self._nonce(n, len(extra)),
                False,
            )
            for n, extra in chains
        ]
        results = await self._generate(asks)
        return [None if r is None or not r.samples else r.samples[0] for r in results]

    async def sample(self, asks: Sequence[tuple[int, bytes, int, int]]) -> list[ExpandResult | None]:
        """``k`` samples after explicit prefixes ``(node, prefix ids, k, nonce)``: the answers
        are booked (their samples as nodes) but not committed to this context's tree (a search
        over a shared tree commits them to the tree's store). None where the budget refused."""
        return await self._generate([(n, prompt, k, nonce, True) for n, prompt, k, nonce in asks])

    async def expand_distinct(self, node: int, k: int, head_tokens: int) -> list[int]:
        """Distinct next steps of ``node`` for fewer tokens: ``k`` samples of a step's first
        ``head_tokens`` tokens (its *head*), identical heads merged (with the heads earlier calls
        drew for this node too), each new head completed once. Where the head decides the step
        (Game of 24's ``4 + 8 =``), each copy that plain sampling would draw whole costs
        ``head_tokens`` instead. Returns the new child ids (a head that ended its step is a
        child as it is); fewer, or none, where the budget refused.
        """
        if k <= 0 or not self.expandable(node):
            return []
        if not 0 < head_tokens < self.max_step_tokens:  # no head shorter than a step: whole steps
            (kids,) = await self.expand([node], k)
            return kids
        prefix = self.prefix_ids(node)
        nonce = self._nonce(node, -1)  # heads count apart from whole expansions of the node
        (heads,) = await self._generate([(node, prefix, k, nonce, False)], head_tokens)
        if heads is None:
            return []
        seen = self._heads.setdefault(node, set())
        steps: list[GeneratedStep] = []  # new heads that ended their step, then completed ones
        partial: list[GeneratedStep] = []
        for s in heads.samples:
            if s.token_ids not in seen:
                seen.add(s.token_ids)
                (partial if s.finish_reason == "length" else steps).append(s)
        self.guard.spent.nodes += len(steps)  # completions count as nodes when they are booked
        rests = await self._generate(
            [(node, prefix + h.token_ids, 1, 0, True) for h in partial], self.max_step_tokens - head_tokens
        )
        for h, r in zip(partial, rests, strict=True):
            if r is not None and r.samples:
                rest = r.samples[0]
                text, ids = h.text + rest.text, h.token_ids + rest.token_ids
                steps.append(GeneratedStep(text, ids, h.logprob + rest.logprob, rest.finish_reason))
        if not steps:
            return []
        return self._commit_expansion(node, ExpandResult(tuple(steps), 0, 0, 0, heads.replica))

    def _nonce(self, node: int, extra: int) -> int:
        """Expansions of this prefix so far (distinct samples each time it is expanded)."""
        key = (node, extra)
        nonce = self._expansions.get(key, 0)
        self._expansions[key] = nonce + 1
        return nonce

    def steps(self, node: int) -> tuple[str, ...]:
        """The node's chain of step texts (memoised per node; extends its parent's)."""
        cached = self._steps.get(node)
        if cached is None:
            cached = self._steps[node] = (*self.steps(self.tree.parent[node]), self.tree.step_text[node])
        return cached

    def prefix_ids(self, node: int) -> bytes:
        """The node's prefix (prompt + steps) as token-id bytes (memoised per node)."""
        cached = self._prefix.get(node)
        if cached is None:
            step = self._step_ids.get(node)
            if step is None:
                step = encode_ids(self.tree.token_ids[node])
            cached = self._prefix[node] = self.prefix_ids(self.tree.parent[node]) + step
        return cached

    async def _generate(
        self, asks: Sequence[tuple[int, bytes, int, int, bool]], max_tokens: int | None = None
    ) -> list[ExpandResult | None]:
        """Reserves, sends and settles generation requests ``(node, prompt ids, samples wanted,
        nonce, samples are nodes)``, at most ``max_tokens`` per sample (None: the step cap);
        None where the budget refused."""
        if self.settled is not None:  # stopped early: nothing more is spent
            return [None] * len(asks)
        self.tick()
        delim, guard = self.task.step_delimiter, self.guard
        max_step = self.max_step_tokens if max_tokens is None else max_tokens
        plans: list[tuple[int, ExpandRequest, Costs]] = []
        for i, (node, prompt, want, nonce, _) in enumerate(asks):
            prompt_tokens = len(prompt) >> 2
            for n in range(want, 0, -1):  # as many samples as the budget affords
                gen = n * max_step  # worst case: every sample at the step cap, no cache hit
                prefill, decode = self.cost.generation(prompt_tokens, 0, gen)
                worst = (gen, prompt_tokens + gen, prefill + decode, 1, n)
                if guard.reserve_costs(worst):
                    break
                self.exhausted = True
            else:
                continue
            plans.append((i, ExpandRequest(self.problem.id, node, prompt, n, max_step, delim, nonce), worst))
        out: list[ExpandResult | None] = [None] * len(asks)
        if plans:
            results = await self._answers(
                GENERATE, tuple(r.node for _, r, _ in plans), [r for _, r, _ in plans]
            )
            spent = guard.spent
            for (i, _, worst), res in zip(plans, results, strict=True):
                guard.release_costs(worst)
                prefill, decode = self.cost.generation(
                    res.prompt_tokens, res.cached_prompt_tokens, res.generated_tokens
                )
                spent.policy_prompt_tokens += res.prompt_tokens
                spent.policy_cached_prompt_tokens += res.cached_prompt_tokens
                spent.policy_generated_tokens += res.generated_tokens
                spent.generator_calls += 1
                spent.nodes += len(res.samples) if asks[i][4] else 0  # rollout steps are no nodes
                spent.policy_prefill_flops += prefill
                spent.policy_decode_flops += decode
                out[i] = res
        self.tick()
        return out

    def new_steps(self, base: tuple[str, ...], res: ExpandResult) -> list[tuple[Step, str | None]]:
        """The samples of an expansion of a chain ``base`` as tree steps: whether each ends
        the chain, and its answer if it does."""
        task, problem = self.task, self.problem
        last = len(base) + 1 >= task.max_depth
        out = []
        for s in res.samples:
            chain = (*base, s.text)
            terminal = last or s.finish_reason == "eos" or task.is_terminal(problem, chain)
            step = Step(s.text, tuple(decode_ids(s.token_ids)), s.logprob, terminal)
            out.append((step, task.extract_answer(problem, chain) if terminal else None))
        return out

    def _commit_expansion(self, node: int, res: ExpandResult) -> list[int]:
        tree, base = self.tree, self.steps(node)
        new = self.new_steps(base, res)
        ids = tree.add_children(node, [step for step, _ in new], res.replica)
        stop = self.stop
        for child, (step, answer), sample in zip(ids, new, res.samples, strict=True):
            self._step_ids[child] = sample.token_ids
            chain = self._steps[child] = (*base, step.text)
            if step.terminal:
                tree.answer[child] = answer
                if stop is not None and self.settled is None and stop.verified(self.problem, chain):
                    self.settle(child)
        return ids

    # ------------------------------------------------------------------ scoring
    def count_state(self, node: int) -> CountState:
        """PRM-token upper bound of the chain root..node: its parent's (the exact count, once
        the parent was scored) extended by the node's own step (memoised per node)."""
        state = self._counts.get(node)
        if state is None:
            if node == ROOT:
                state = self.counter.root(self._question, self.problem.prompt)
            else:
                state = self.counter.extend(
                    self.count_state(self.tree.parent[node]), self.tree.step_text[node]
                )
            self._counts[node] = state
        return state

    async def score(self, nodes: Sequence[int]) -> list[float]:
        """PRM scores of each node's last step, in [0, 1] (NaN/inf mapped to 0 and counted).

        Already-scored nodes are not sent again. Scores of every step on the chain are
        written into the tree. Nodes the budget cannot afford keep NaN (``exhausted`` set).
        """
        tree = self.tree
        score = tree.prm_score
        if self.settled is not None:
            return [score[n] if n != ROOT else 1.0 for n in nodes]
        todo = [n for n in dict.fromkeys(nodes) if n != ROOT and score[n] != score[n]]  # NaN: unscored
        chains = [(n, self.steps(n), self.count_state(n)[0]) for n in todo]
        parent = tree.parent
        for node, scores in zip(todo, await self._score(chains, own=True), strict=True):
            if scores is not None:  # write the chain's unscored steps, deepest first
                n, i = node, len(scores) - 1
                while n != ROOT and score[n] != score[n]:
                    score[n] = scores[i]
                    n, i = parent[n], i - 1
        if self.stop is not None and self.stop.mode == "threshold":
            answer = self.stop.settled(tree, tree.terminals())
            if answer is not None:
                self.settle(answer)
        return [score[n] if n != ROOT else 1.0 for n in nodes]

    async def score_chains(
        self, chains: Sequence[tuple[int, Sequence[str]]]
    ) -> list[tuple[float, ...] | None]:
        """Step scores of explicit chains ``(node, every step from the first)``, e.g. a tree
        node's chain followed by rollout steps. Nothing is written to the tree; None where
        the budget refused."""
        planned = []
        for node, steps in chains:
            state = self.counter.root(self._question, self.problem.prompt)
            for s in steps:
                state = self.counter.extend(state, s)
            planned.append((node, tuple(steps), state[0]))
        return await self._score(planned)

    async def _score(
        self, chains: Sequence[tuple[int, tuple[str, ...], int]], own: bool = False
    ) -> list[tuple[float, ...] | None]:
        """Reserves, sends and settles the scoring of chains ``(node, steps, token bound)``, all
        in one request; with ``own`` (each chain is its node's), the PRM's exact counts rebase
        the nodes' bounds."""
        if self.settled is not None:
            return [None] * len(chains)
        self.tick()
        guard, scoring = self.guard, self.cost.scoring
        fits, bound = [], 0
        for i, (_, _, b) in enumerate(chains):
            if guard.reserve_costs((0, b, scoring(b), 0, 0)):  # chain by chain, while they fit
                fits.append(i)
                bound += b
            else:
                self.exhausted = True
        out: list[tuple[float, ...] | None] = [None] * len(chains)
        if not fits:
            self.tick()
            return out
        nodes = tuple(chains[i][0] for i in fits)
        req = ScoreRequest(self.problem.id, nodes, self._question, tuple(chains[i][1] for i in fits), bound)
        (res,) = await self._answers(SCORE, nodes, [req])
        guard.release_costs((0, bound, scoring(bound), 0, 0))
        if res.refused:  # the PRM's exact count is over the bound: nothing was run
            self.exhausted = True
            self.tick()
            return out
        if len(res.scores) != len(fits):
            raise RuntimeError(f"PRM returned {len(res.scores)} results for {len(fits)} chains")
        spent, rebase, counts = guard.spent, self.counter.rebase, self._counts
        for i, chain, scores, tokens in zip(fits, req.chains, res.scores, res.tokens, strict=True):
            if len(scores) != len(chain):
                raise RuntimeError(f"PRM returned {len(scores)} scores for a {len(chain)}-step chain")
            if not (math.isfinite(sum(scores)) and min(scores) >= 0.0 and max(scores) <= 1.0):
                spent.nonfinite_scores += sum(not math.isfinite(x) for x in scores)
                scores = tuple(min(1.0, max(0.0, x)) if math.isfinite(x) else 0.0 for x in scores)
            spent.prm_tokens += tokens
            spent.prm_flops += scoring(tokens)
            if own:
                node = chains[i][0]
                counts[node] = rebase(counts[node], tokens)
            out[i] = scores
        spent.prm_calls += len(fits)
        self.tick()
        return out

    # ------------------------------------------------------------------ answers, journal
    async def _answers(self, kind: int, nodes: tuple[int, ...], requests: list[Any]) -> Sequence[Any]:
        """The backend's answers to ``requests``: from the replay journal while it lasts
        (checked against what was recorded), then live through the batcher."""
        if self._replay:
            rec_kind, rec_nodes, answers = self._replay.popleft()
            if rec_kind != kind or rec_nodes != nodes:
                names = ("generate", "score")
                raise ReplayDiverged(
                    f"problem {self.problem.id}: replay asked {names[kind]} {nodes[:8]}, "
                    f"the journal has {names[rec_kind]} {rec_nodes[:8]}"
                )
        elif kind == GENERATE:
            answers = tuple(await self.batcher.generate(requests))
        else:
            answers = tuple(await self.batcher.score(requests))
        if self.journal is not None:
            self.journal.append((kind, nodes, answers))
        return answers
