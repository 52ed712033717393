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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from treesearch.context import SearchContext
from treesearch.selection import Aggregate, Selection, select_answer
from treesearch.tree import ROOT, TERMINAL


@dataclass
class BestOfNConfig:
    n: int = 16  # chains to sample at most
    wave: int = 0  # chains started together; 0 means all n at once
    selection: Selection = "prod"  # last | min | prod | vote | weighted_vote
    aggregate: Aggregate = "prod"  # chain score used by weighted_vote and tie-breaks


async def best_of_n(ctx: SearchContext, cfg: BestOfNConfig) -> int | None:
    tree = ctx.tree
    wave = cfg.wave or cfg.n
    finished: list[int] = []
    started = 0
    while started < cfg.n and not ctx.exhausted:
        (frontier,) = await ctx.expand([ROOT], min(wave, cfg.n - started))
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
