"""Best-of-N with a verifier (Cobbe et al., 2021; Lightman et al., 2023).

Sample up to ``n`` complete chains independently (in waves of ``wave`` chains, so a budget
cut leaves finished chains rather than many half-chains), score every step with the PRM, and
pick one by ``selection``: the best chain by its last / min / product step score, a majority
vote over answers, or a PRM-weighted vote.

    chains = []
    while len(chains) < n and budget left:
        start = expand(root, k=min(wave, n - len(chains)))
        extend each open chain by one step (k=1) until terminal
        score the finished chains
    return select(chains)

Sized by the budget (``auto``, :mod:`treesearch.sizing`): ``n`` is unbounded (waves go on
until the budget refuses or the search stops early) and a wave is a quarter of the chains the
budget affords (at least 1). With no limit: ``n`` 16, one wave.
"""

from __future__ import annotations

import math

from treesearch.context import SearchContext
from treesearch.schema import Auto, Count, Count0, section
from treesearch.selection import Aggregate, Selection, select_answer
from treesearch.sizing import sized
from treesearch.tree import ROOT, TERMINAL

UNBOUNDED = 1 << 30


@section
class BestOfNConfig:
    n: Count | Auto = "auto"  # chains to sample at most
    wave: Count0 | Auto = "auto"  # chains started together; 0 means all n at once
    selection: Selection = "prod"  # last | min | prod | vote | weighted_vote
    aggregate: Aggregate = "prod"  # chain score used by weighted_vote and tie-breaks


def shape(ctx: SearchContext, cfg: BestOfNConfig) -> tuple[int, int]:
    """``(n, wave)`` of this search (see module docstring)."""
    a = ctx.allowance()
    if not a.limited:
        n = sized(cfg.n, 16)
        return n, sized(cfg.wave, n) or n
    n = sized(cfg.n, UNBOUNDED)
    return n, sized(cfg.wave, a.chains() // 4) or n


async def best_of_n(ctx: SearchContext, cfg: BestOfNConfig) -> int | None:
    tree = ctx.tree
    n, wave = shape(ctx, cfg)
    finished: list[int] = []
    started = 0
    while started < n and not ctx.exhausted:
        (frontier,) = await ctx.expand([ROOT], min(wave, n - started))
        if not frontier:
            break
        started += len(frontier)
        while True:
            done = [n for n in frontier if tree.status[n] == TERMINAL]
            finished.extend(done)
            frontier = [n for n in frontier if tree.status[n] != TERMINAL and ctx.expandable(n)]
            if not frontier:
                break
            nxt = await ctx.expand(frontier, 1)
            frontier = [c for kids in nxt for c in kids]
        await ctx.score(finished)  # already-scored chains are not sent again
    scored = [n for n in finished if not math.isnan(tree.prm_score[n])]
    return select_answer(tree, scored, cfg.selection, cfg.aggregate)
