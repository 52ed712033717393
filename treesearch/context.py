"""What an algorithm touches: its problem, its tree, and a few asks (expand, score, sample...).

A :class:`SearchContext` turns an algorithm's asks into metered requests
(:mod:`treesearch.metered`: reserved against the budget, sent, booked) and commits the answers
to the tree, checking the stop rule on each finished chain (:mod:`treesearch.stopping`).
Algorithms never see a backend.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import TypeVar

from treesearch.budget import BudgetGuard, Ledger
from treesearch.chains import ChainMemo, as_steps
from treesearch.heads import distinct_steps
from treesearch.metered import GenerationAsk, MeteredClient, ScoringAsk
from treesearch.protocol import ExpandResult, GeneratedStep
from treesearch.sizing import Allowance, StepCost, allowance
from treesearch.stopping import NEVER, StopRule
from treesearch.tasks.base import Problem, Task
from treesearch.tree import ROOT, TERMINAL, Step, Tree

T = TypeVar("T")


class SearchContext:
    """Everything an algorithm may touch.

    Attributes:
      problem, task: what is being solved.
      tree: the problem's search tree (the algorithm reads it and calls its MCTS ops).
      guard: the problem's budget (``guard.spent`` is its ledger).
      stopped_with: the answer node once the stop rule ended the search; every later ask is
        refused at no cost, and this node is the answer.
      step_cost: what a step sample is expected to cost (:mod:`treesearch.sizing`).
      chains: each node's chain, prefix ids and PRM-token bound (:mod:`treesearch.chains`).
    """

    def __init__(self, problem: Problem, task: Task, tree: Tree, client: MeteredClient, chains: ChainMemo,
                 step_cost: StepCost, stop: StopRule = NEVER, seed: int = 0):  # fmt: skip
        self.problem, self.task, self.tree = problem, task, tree
        self.client, self.chains, self.step_cost, self.stop = client, chains, step_cost, stop
        self.guard: BudgetGuard = client.guard
        self.stopped_with: int | None = None
        self._nonces: dict[tuple[int, int], int] = {}  # times each (node, extra steps) was sampled
        self._nonce_base = seed << 20  # a request's own seed: its own samples of the same prefixes
        self.heads: dict[int, set[bytes]] = {}  # step heads drawn per node (expand_distinct)

    @property
    def ledger(self) -> Ledger:
        return self.guard.spent

    @property
    def exhausted(self) -> bool:
        """The budget refused (part of) an ask, or the search stopped: finish with the tree."""
        return self.client.exhausted or self.client.closed

    @property
    def head_tokens(self) -> int:
        """Tokens of the task's step head (0: the task names none; see :meth:`expand_distinct`)."""
        return self.step_cost.head_tokens

    def new_round(self) -> None:
        """A job budget granted more: the search may go on where its budget had stopped it."""
        self.client.exhausted = False

    def stop_with(self, node: int | None) -> None:
        """Ends the search with ``node`` as its answer (the stop rule was met); None: not yet."""
        if self.stopped_with is None and node is not None:
            self.stopped_with = node
            self.client.closed = True

    async def await_external(self, work: Awaitable[T]) -> T:
        """Awaits ``work`` that is not a backend request (a shared tree's call, a job budget's
        grant): the search counts as waiting meanwhile, so the batcher does not hold other
        searches' requests for it."""
        batcher = self.client.batcher
        batcher.park()
        try:
            return await work
        finally:
            batcher.unpark()

    def allowance(self) -> Allowance:
        """What the remaining budget affords, in step samples (:mod:`treesearch.sizing`)."""
        return allowance(self.guard, self.step_cost, self.client.cost)

    def expandable(self, node: int) -> bool:
        return self.tree.status[node] != TERMINAL and self.tree.depth[node] < self.task.max_depth

    def nonce(self, node: int, extra: int) -> int:
        """Times ``node`` (with ``extra`` steps after it) was sampled before (distinct samples)."""
        nonce = self._nonces[node, extra] = self._nonces.get((node, extra), -1) + 1
        return self._nonce_base + nonce

    # ------------------------------------------------------------------ generation
    async def expand(self, nodes: Sequence[int], k: int | Sequence[int]) -> list[list[int]]:
        """Expands each node by one step, ``k`` samples each; returns the new child ids.

        A node the budget cannot afford gets fewer samples, or none; so do terminal nodes and
        nodes at the depth limit. A node may appear several times (independent samples)."""
        ks = [k] * len(nodes) if isinstance(k, int) else list(k)
        wanted = [want > 0 and self.expandable(n) for n, want in zip(nodes, ks, strict=True)]
        asks = [GenerationAsk(n, self.chains.prefix_ids(n), want, self.nonce(n, 0))
                for n, want, w in zip(nodes, ks, wanted, strict=True) if w]  # fmt: skip
        answers = iter(await self.client.generate(asks))
        out = []
        for n, w in zip(nodes, wanted, strict=True):
            res = next(answers) if w else None
            out.append([] if res is None else self.commit(n, res))
        return out

    async def continue_chains(
        self, chains: Sequence[tuple[int, Sequence[GeneratedStep]]]
    ) -> list[GeneratedStep | None]:
        """One more sampled step for each (tree node, steps after it outside the tree): for
        rollouts; nothing is added to the tree, the cost is booked. None where refused."""
        asks = [GenerationAsk(n, self.chains.prefix_ids(n) + b"".join(s.token_ids for s in extra), 1,
                              self.nonce(n, len(extra)), are_nodes=False) for n, extra in chains]  # fmt: skip
        answers = await self.client.generate(asks)
        return [r.samples[0] if r is not None and r.samples else None for r in answers]

    async def sample(self, asks: Sequence[GenerationAsk]) -> list[ExpandResult | None]:
        """Samples after explicit prefixes, booked (as nodes) but not committed to this tree (a
        search over a shared tree commits them there). None where the budget refused."""
        return await self.client.generate(asks)

    async def expand_distinct(self, node: int, k: int, head_tokens: int) -> list[int]:
        """Distinct next steps of ``node``: ``k`` samples of a step's head, identical heads merged,
        each new one completed once (:func:`treesearch.heads.distinct_steps`)."""
        return await distinct_steps(self, node, k, head_tokens)

    def new_steps(self, base: tuple[str, ...], res: ExpandResult) -> list[tuple[Step, str | None]]:
        """An expansion's samples after chain ``base`` as tree steps, each with its answer."""
        return as_steps(self.task, self.problem, base, res.samples)

    def commit(self, node: int, res: ExpandResult) -> list[int]:
        """An expansion's samples as children of ``node``; returns their ids."""
        tree, base = self.tree, self.chains.steps(node)
        new = self.new_steps(base, res)
        ids = tree.add_children(node, [step for step, _ in new], res.replica)
        for child, (step, answer), sample in zip(ids, new, res.samples, strict=True):
            chain = (*base, step.text)
            self.chains.add(child, sample.token_ids, chain)
            if step.terminal:
                tree.answer[child] = answer
                if self.stopped_with is None and self.stop.verified(self.problem, chain):
                    self.stop_with(child)
        return ids

    # ------------------------------------------------------------------ scoring
    async def score(self, nodes: Sequence[int]) -> list[float]:
        """PRM scores of each node's last step, in [0, 1]. Scored nodes are not sent again; every
        step of a scored chain is written into the tree; nodes the budget refused keep NaN."""
        tree = self.tree
        score, parent = tree.prm_score, tree.parent
        asking = self.stopped_with is None  # stopped: nothing more is asked
        todo = [n for n in dict.fromkeys(nodes) if asking and n != ROOT and score[n] != score[n]]  # NaN: new
        asks = [ScoringAsk(n, self.chains.steps(n), self.chains.count_state(n)[0]) for n in todo]
        for node, scored in zip(todo, await self.client.score(self.chains.question, asks), strict=True):
            if scored is None:
                continue
            self.chains.rebase(node, scored.tokens)
            n, i = node, len(scored.scores) - 1  # the chain's unscored steps, deepest first
            while n != ROOT and score[n] != score[n]:
                score[n] = scored.scores[i]
                n, i = parent[n], i - 1
        if self.stop.mode == "threshold" and self.stopped_with is None:  # a scan of the finished chains
            self.stop_with(self.stop.threshold_answer(tree, tree.terminals()))
        return [score[n] if n != ROOT else 1.0 for n in nodes]

    async def score_chains(
        self, chains: Sequence[tuple[int, Sequence[str]]]
    ) -> list[tuple[float, ...] | None]:
        """Step scores of explicit chains ``(node, every step from the first)``, e.g. a node's
        chain and rollout steps after it. Nothing is written to the tree; None where refused."""
        asks = [ScoringAsk(n, tuple(s), self.chains.chain_bound(tuple(s))) for n, s in chains]
        return [None if r is None else r.scores for r in await self.client.score(self.chains.question, asks)]
