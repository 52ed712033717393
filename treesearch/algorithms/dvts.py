"""Diverse verifier tree search (Beeching et al., 2024, search-and-learn's ``dvts``).

Split the budget into ``n_subtrees`` independent subtrees so that one high-scoring prefix
cannot capture the whole search. Each subtree starts with its own ``expansions`` samples
from the root and then runs a greedy beam of width 1: at every depth it samples
``expansions`` next steps and keeps the one the PRM scores best. The final answer is chosen
among the subtrees' finished chains.

    heads = [best(score(expand(root, expansions))) for each subtree]
    while some head is open:
        heads = [best(score(expand(head, expansions))) for each open head]
    return select(finished heads)

Sized by the budget (``auto``, :mod:`treesearch.sizing`, ``S`` step samples affordable): a
depth gets ``S / depth`` samples (at most what can be reserved at once): ``n_subtrees`` a
quarter of them, ``expansions`` the rest per subtree (at most 4). With no limit: 4 x 4.
"""

from __future__ import annotations

from treesearch.context import SearchContext
from treesearch.schema import Auto, Count, section
from treesearch.selection import Aggregate, Selection, best_by_score, select_answer
from treesearch.sizing import sized
from treesearch.tree import ROOT, TERMINAL


@section
class DVTSConfig:
    n_subtrees: Count | Auto = "auto"  # independent subtrees (search-and-learn: n / beam_width)
    expansions: Count | Auto = "auto"  # samples per head per depth (search-and-learn: beam_width)
    selection: Selection = "last"  # how the final answer is chosen among finished chains
    aggregate: Aggregate = "last"  # chain score used to pick each subtree's best child


async def dvts(ctx: SearchContext, cfg: DVTSConfig) -> int | None:
    tree = ctx.tree
    a = ctx.allowance()
    if a.limited:  # per depth: subtrees x expansions samples, at most what can be reserved
        per_depth = min(a.samples / a.depth, a.worst)
        subtrees = sized(cfg.n_subtrees, per_depth / 4)
        expansions = sized(cfg.expansions, min(4, per_depth / subtrees))
    else:
        subtrees, expansions = sized(cfg.n_subtrees, 4), sized(cfg.expansions, 4)
    finished: list[int] = []
    heads = [ROOT] * subtrees
    while heads:
        groups = await ctx.expand(heads, expansions)
        await ctx.score([c for g in groups for c in g])
        heads = []
        for group in groups:
            best = best_by_score(tree, group, cfg.aggregate)
            if best is None:
                continue
            for other in group:
                if other != best:
                    tree.prune(other)
            if tree.status[best] == TERMINAL:
                finished.append(best)
            elif ctx.expandable(best):
                heads.append(best)
        if ctx.exhausted:
            break
    return select_answer(tree, finished, cfg.selection, cfg.aggregate)
