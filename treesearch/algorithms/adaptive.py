"""Adaptive: a cheap probe per problem decides where the rest of its budget goes (after Snell
et al., 2024, who choose the test-time strategy by estimated difficulty).

1. Probe: ``probe`` of the first steps a budget-sized beam would sample at the root
   (``ROOT_SHARE`` of the step samples the budget affords, :mod:`treesearch.sizing`), scored
   by the PRM. With early stopping a problem a first step already solves ends here.
2. Difficulty: the best first step's PRM score, how good the best start the policy offered
   looks to the verifier.
3. Easy (best >= ``easy_score``): go deep at once, a budget-sized beam search from the probe's
   first steps, so the root samples not drawn go to depth. Hard: go wide first, new first
   steps until the root's share of the budget is spent, then the beam from all of them.

First steps are drawn as *heads* (``head_tokens``, default the task's ``step_head``: Game of
24's operation, ``4 + 8 =``), identical heads merged and each new one completed once
(:meth:`~treesearch.context.SearchContext.expand_distinct`): a copy of a first step costs its
head instead of the whole step, so the root's share buys more distinct first steps.

    firsts = score(distinct_steps(root, probe x root share))
    while max(score(firsts)) < easy_score and the root's share is not spent:
        firsts += score(distinct_steps(root, what is left of the share))
    return beam(from firsts, the rest of the budget)

Why (Game of 24, embedded models, dev split): a small policy's failures are mostly first steps
from which 24 is out of reach (at 600 tokens, 18-27 of a run's 25-32 failures had no first
step in the tree that kept 24 reachable). Going deep from a probe whose first steps all look
bad solved 1 of 29 such puzzles where new first steps solved 10; where the probe already holds
a good start, the samples a fixed root share would still draw are better spent deeper. The bar
for "good" is high (``easy_score`` 0.9: at 0.6, 8 points fewer at 600 tokens).

13 whole first steps (346 tokens) hold 6.7 distinct valid ones and a good one for 82 of the
100 dev puzzles; 19 heads (321 tokens) 8.5 and 84 (``benchmarks/first_step_heads.py``). Dev
split, seeds 0-3, 300 / 600 / 1,200 tokens: 65.3 / 79.0 / 86.0% with heads, 60.8 / 73.3 /
83.3% with whole first steps (best single algorithm: 61.5 / 77.0 / 84.5%); every puzzle
hard, with heads: 64.5 / 77.0 / 86.8%: the heads make the lead, the split adds little.
"""

from __future__ import annotations

import math

from treesearch.algorithms.beam import BeamConfig, beam_search
from treesearch.context import SearchContext
from treesearch.schema import Auto, Flag, Float, Int, section
from treesearch.selection import Aggregate, Selection
from treesearch.sizing import ROOT_SHARE
from treesearch.tree import ROOT


@section
class AdaptiveConfig:
    probe: Float(gt=0, le=1) = 0.5  # share of the root's samples drawn before judging difficulty
    # best first-step PRM score from which a problem counts as easy (above 1: none is)
    easy_score: Float(ge=0, le=2) = 0.9
    # first steps drawn as heads this long, identical heads merged (0: whole steps)
    head_tokens: Int(ge=0, le=1_000_000) | Auto = "auto"
    dedup: Flag = True  # the beam merges identical chains
    selection: Selection = "last"  # the beam's choice among finished chains
    aggregate: Aggregate = "last"  # the beam's chain score


async def adaptive(ctx: SearchContext, cfg: AdaptiveConfig) -> int | None:
    tree = ctx.tree
    a = ctx.allowance()
    share = min(ROOT_SHARE * a.samples, a.worst) if a.limited else 16
    if isinstance(cfg.head_tokens, int):
        head = cfg.head_tokens
    else:  # auto: the task's head (0 without one: whole steps)
        head = ctx.step_cost.head_tokens if ctx.step_cost else 0

    async def first_steps(k: int) -> list[int]:
        kids = await ctx.expand_distinct(ROOT, k, head)
        await ctx.score(kids)
        return kids

    firsts = await first_steps(max(1, int(cfg.probe * share)))
    scores = [tree.prm_score[c] for c in firsts if not math.isnan(tree.prm_score[c])]
    hard = not scores or max(scores) < cfg.easy_score
    empty = 0  # calls in a row that found no new first step
    while hard and not ctx.exhausted and empty < 2:  # hard: wide at the root, its whole share
        left = int(share - (a.samples - ctx.allowance().samples)) if a.limited else int(share) - len(firsts)
        if left < 1:
            break
        new = await first_steps(left)
        empty = 0 if new else empty + 1
        firsts += new
    beam = BeamConfig(dedup=cfg.dedup, selection=cfg.selection, aggregate=cfg.aggregate)
    return await beam_search(ctx, beam, seeds=firsts)
