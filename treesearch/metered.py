"""One problem's requests, metered: reserved against its budget, sent, booked, checked.

A :class:`MeteredClient` is how a search's asks reach the backends. Each generation request
reserves its worst case first (every sample at its token cap, no prefix-cache hit), with fewer
samples, or none, when the budget cannot afford all of them; each scoring request reserves
its chains' PRM-token bounds. Answers come through the problem's
:class:`~treesearch.journal.Journal` (replayed, else live from the engine's batcher); their
real cost is booked into the ledger and the reservation released, and PRM scores outside
[0, 1] (NaN, inf) are clamped and counted. Once the search has stopped, every ask is refused
at no cost.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence
from typing import NamedTuple

from treesearch.batcher import Batcher
from treesearch.budget import BudgetGuard, Costs, ModelCost
from treesearch.journal import GENERATE, SCORE, Journal
from treesearch.protocol import ExpandRequest, ExpandResult, ScoreRequest, ScoreResult


class GenerationAsk(NamedTuple):
    """``samples`` next steps after ``prompt_ids`` (the prefix of tree node ``node``);
    ``nonce``: how many times this prefix was sampled before; ``are_nodes``: the samples become
    tree nodes (counted in ``ledger.nodes``; rollout steps do not)."""

    node: int
    prompt_ids: bytes
    samples: int
    nonce: int
    are_nodes: bool = True


class ScoringAsk(NamedTuple):
    """PRM scores of a chain (every step from the first) that belongs to tree node ``node``;
    ``token_bound``: an upper bound of the PRM tokens it costs."""

    node: int
    steps: tuple[str, ...]
    token_bound: int


class Scored(NamedTuple):
    """A scored chain: one score per step, in [0, 1], and the exact PRM tokens it cost."""

    scores: tuple[float, ...]
    tokens: int


# NamedTuple construction through its Python-level __new__ costs ~0.2 us; a request makes
# several of these, so the hot path builds them as tuples of the type directly (the same objects)
_costs = functools.partial(tuple.__new__, Costs)
_scored = functools.partial(tuple.__new__, Scored)
NO_COSTS = Costs(0, 0, 0, 0, 0)


class MeteredClient:
    """A problem's way to the backends (see module docstring).

    Attributes:
      guard: the problem's budget (``guard.spent`` is its ledger).
      exhausted: set once the budget refused (part of) an ask; a new round of a job budget
        clears it.
      closed: the search has stopped (its stop rule was met): asks are refused at no cost.
    """

    __slots__ = ("_started", "batcher", "closed", "cost", "delimiter", "exhausted", "guard", "journal",
                 "max_step_tokens", "problem_id")  # fmt: skip

    def __init__(
        self,
        problem_id: str,
        guard: BudgetGuard,
        cost: ModelCost,
        journal: Journal,
        batcher: Batcher,
        delimiter: str,
        max_step_tokens: int,
    ):
        self.problem_id, self.guard, self.cost, self.journal = problem_id, guard, cost, journal
        self.batcher, self.delimiter, self.max_step_tokens = batcher, delimiter, max_step_tokens
        self.exhausted = self.closed = False
        self._started = time.perf_counter()

    def update_wall_time(self) -> None:
        """The ledger's wall seconds: since the search started."""
        self.guard.spent.wall_seconds = time.perf_counter() - self._started

    async def generate(self, asks: Sequence[GenerationAsk], max_tokens: int = 0) -> list[ExpandResult | None]:
        """The answers to ``asks`` (at most ``max_tokens`` per sample; 0: the step cap), None
        where the budget afforded no sample."""
        if self.closed:
            return [None] * len(asks)
        self.update_wall_time()
        cap = max_tokens or self.max_step_tokens
        plans: list[tuple[int, ExpandRequest, Costs]] = []
        for i, ask in enumerate(asks):
            samples, worst = self._reserve_samples(len(ask.prompt_ids) >> 2, ask.samples, cap)
            if samples:
                req = ExpandRequest(self.problem_id, ask.node, ask.prompt_ids, samples, cap, self.delimiter,
                                    ask.nonce)  # fmt: skip
                plans.append((i, req, worst))
        out: list[ExpandResult | None] = [None] * len(asks)
        if plans:
            nodes = tuple(req.node for _, req, _ in plans)
            answers = await self.journal.answers(
                GENERATE, nodes, [r for _, r, _ in plans], self.batcher.generate
            )
            for (i, _, worst), res in zip(plans, answers, strict=True):
                self._book_generation(res, worst, asks[i].are_nodes)
                out[i] = res
        self.update_wall_time()
        return out

    def _reserve_samples(self, prompt_tokens: int, want: int, cap: int) -> tuple[int, Costs]:
        """As many of ``want`` samples as the budget affords (0 if none), and their reservation."""
        for n in range(want, 0, -1):
            gen = n * cap  # worst case: every sample at the cap, no cache hit
            prefill, decode = self.cost.generation(prompt_tokens, 0, gen)
            worst = _costs((gen, prompt_tokens + gen, prefill + decode, 1, n))
            if self.guard.reserve_costs(worst):
                return n, worst
            self.exhausted = True
        return 0, NO_COSTS

    def _book_generation(self, res: ExpandResult, worst: Costs, are_nodes: bool) -> None:
        self.guard.release_costs(worst)
        spent = self.guard.spent
        prefill, decode = self.cost.generation(
            res.prompt_tokens, res.cached_prompt_tokens, res.generated_tokens
        )
        spent.policy_prompt_tokens += res.prompt_tokens
        spent.policy_cached_prompt_tokens += res.cached_prompt_tokens
        spent.policy_generated_tokens += res.generated_tokens
        spent.generator_calls += 1
        spent.nodes += len(res.samples) if are_nodes else 0
        spent.policy_prefill_flops += prefill
        spent.policy_decode_flops += decode

    async def score(self, question: str, asks: Sequence[ScoringAsk]) -> list[Scored | None]:
        """Scores of each ask's chain, all in one request; None for chains the budget refused."""
        out: list[Scored | None] = [None] * len(asks)
        if self.closed:
            return out
        self.update_wall_time()
        fits, bound, scoring = [], 0, self.cost.scoring
        for i, ask in enumerate(asks):
            b = ask.token_bound
            if self.guard.reserve_costs(_costs((0, b, scoring(b), 0, 0))):  # chain by chain, while they fit
                fits.append(i)
                bound += b
            else:
                self.exhausted = True
        if fits:
            nodes = tuple(asks[i].node for i in fits)
            req = ScoreRequest(self.problem_id, nodes, question, tuple(asks[i].steps for i in fits), bound)
            (res,) = await self.journal.answers(SCORE, nodes, [req], self.batcher.score)
            self.guard.release_costs(_costs((0, bound, scoring(bound), 0, 0)))
            if res.refused:  # the PRM's exact count is over the bound: nothing was run
                self.exhausted = True
            else:
                for i, scored in zip(fits, self._book_scores(req, res), strict=True):
                    out[i] = scored
        self.update_wall_time()
        return out

    def _book_scores(self, req: ScoreRequest, res: ScoreResult) -> list[Scored]:
        if len(res.scores) != len(req.chains):
            raise RuntimeError(f"PRM returned {len(res.scores)} results for {len(req.chains)} chains")
        spent, scoring, out = self.guard.spent, self.cost.scoring, []
        for chain, scores, tokens in zip(req.chains, res.scores, res.tokens, strict=True):
            if len(scores) != len(chain):
                raise RuntimeError(f"PRM returned {len(scores)} scores for a {len(chain)}-step chain")
            if not (math.isfinite(sum(scores)) and min(scores) >= 0.0 and max(scores) <= 1.0):
                spent.nonfinite_scores += sum(not math.isfinite(x) for x in scores)
                scores = tuple(min(1.0, max(0.0, x)) if math.isfinite(x) else 0.0 for x in scores)
            spent.prm_tokens += tokens
            spent.prm_flops += scoring(tokens)
            out.append(_scored((scores, tokens)))
        spent.prm_calls += len(req.chains)
        return out
