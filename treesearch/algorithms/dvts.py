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
"""

from __future__ import annotations

from dataclasses import dataclass

from treesearch.context import SearchContext
from treesearch.selection import Aggregate, Selection, best_by_score, select_answer
from treesearch.tree import ROOT, TERMINAL


@dataclass
class DVTSConfig:
    n_subtrees: int = 4  # independent subtrees (search-and-learn: n / beam_width)
    expansions: int = 4  # samples per head per depth (search-and-learn: beam_width)
    selection: Selection = "last"  # how the final answer is chosen among finished chains
    aggregate: Aggregate = "last"  # chain score used to pick each subtree's best child


async def dvts(ctx: SearchContext, cfg: DVTSConfig) -> int | None:
    tree = ctx.tree
    finished: list[int] = []
    heads = [ROOT] * cfg.n_subtrees
    while heads:
        groups = await ctx.expand(heads, cfg.expansions)
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
