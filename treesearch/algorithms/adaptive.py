"""Adaptive: a cheap probe per problem decides where the rest of its budget goes (after Snell
et al., 2024, who choose the test-time strategy by estimated difficulty).

1. Probe: ``probe`` of the first steps a budget-sized beam would sample at the root
   (``ROOT_SHARE`` of the step samples the budget affords, :mod:`treesearch.sizing`), scored
   by the PRM. With early stopping a problem a first step already solves ends here.
2. Difficulty: the best first step's PRM score, how good the best start the policy offered
   looks to the verifier.
3. Easy (best >= ``easy_score``): go deep at once, a budget-sized beam search from the probe's
   first steps, so the root samples not drawn go to depth. Hard: go wide first, the rest of
   the root's share in new first steps, then the beam from all of them.

    firsts = score(expand(root, probe x root share))
    if max(score(firsts)) < easy_score: firsts += score(expand(root, the rest of the share))
    return beam(from firsts, the rest of the budget)

Why this split (Game of 24, dev split, embedded models): a small policy's failures are mostly
first steps from which 24 is out of reach. Going deep from a probe whose first steps all look
bad solved 1 of 29 such puzzles where new first steps solved 10 (the same puzzles, the
fixed-shape beam); where the probe already holds a good start, the samples a fixed root share
would still draw are better spent deeper. The bar for "good" is high (``easy_score`` 0.9): at
0.6 most puzzles counted as easy and lost their second half of first steps, which cost 8 points
at 600 tokens on the dev split (seeds 0-1, mean of 300 / 600 / 1,200 tokens: 69.0% at 0.6,
73.0% at 0.9; beam 73.3%, ToT BFS 74.2%). Continuing hard puzzles with ToT BFS instead of the
beam, or easy ones, was no better there (72.8%, 72.5%).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from treesearch.algorithms.beam import BeamConfig, beam_search
from treesearch.context import SearchContext
from treesearch.selection import Aggregate, Selection
from treesearch.sizing import ROOT_SHARE
from treesearch.tree import ROOT


@dataclass
class AdaptiveConfig:
    probe: float = 0.5  # share of the root's samples drawn before judging difficulty (0, 1]
    easy_score: float = 0.9  # best first-step PRM score from which a problem counts as easy
    dedup: bool = True  # the beam merges identical chains
    selection: Selection = "last"  # the beam's choice among finished chains
    aggregate: Aggregate = "last"  # the beam's chain score


async def adaptive(ctx: SearchContext, cfg: AdaptiveConfig) -> int | None:
    if not 0 < cfg.probe <= 1:
        raise ValueError(f"adaptive probe must be in (0, 1], got {cfg.probe}")
    tree = ctx.tree
    a = ctx.allowance()
    share = min(ROOT_SHARE * a.samples, a.worst) if a.limited else 16
    probe = max(1, int(cfg.probe * share))
    (firsts,) = await ctx.expand([ROOT], probe)
    await ctx.score(firsts)
    scores = [tree.prm_score[c] for c in firsts if not math.isnan(tree.prm_score[c])]
    if (not scores or max(scores) < cfg.easy_score) and int(share) > probe and not ctx.exhausted:
        (more,) = await ctx.expand([ROOT], int(share) - probe)  # hard: wide at the root first
        await ctx.score(more)
        firsts += more
    beam = BeamConfig(dedup=cfg.dedup, selection=cfg.selection, aggregate=cfg.aggregate)
    return await beam_search(ctx, beam, seeds=firsts)
