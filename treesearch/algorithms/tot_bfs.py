"""Tree-of-thoughts breadth-first search (Yao et al., 2023, Algorithm 1, ToT-BFS).

At each depth, propose ``samples`` next steps from every kept state, drop duplicate states,
value each with the PRM, and keep the ``breadth`` best (ToT's b). Unlike step-level beam
search, finished chains compete with open ones for the b slots, identical chains are
merged, and the search runs to the task's depth limit.

    S = {root}
    for t in 1..T:
        S' = dedup(expand(S, samples)); V = score(S')
        S = top_b(S', V)
    return select(terminal states seen)
"""

from __future__ import annotations

from dataclasses import dataclass

from treesearch.context import SearchContext
from treesearch.selection import Aggregate, Selection, chain_score, drop_duplicates, select_answer
from treesearch.tree import ROOT, TERMINAL


@dataclass
class ToTBFSConfig:
    breadth: int = 5  # states kept per depth (ToT's b)
    samples: int = 8  # proposals per kept state per depth
    selection: Selection = "last"  # how the final answer is chosen among finished chains
    aggregate: Aggregate = "last"  # chain score used as the state value


async def tot_bfs(ctx: SearchContext, cfg: ToTBFSConfig) -> int | None:
    tree = ctx.tree
    finished: list[int] = []
    frontier = [ROOT]
    while frontier and not ctx.exhausted:
        kids = await ctx.expand(frontier, cfg.samples)
        proposals = drop_duplicates(tree, [c for ks in kids for c in ks])
        await ctx.score(proposals)
        proposals.sort(key=lambda n: (-chain_score(tree, n, cfg.aggregate), n))
        kept, dropped = proposals[: cfg.breadth], proposals[cfg.breadth :]
        for n in dropped:
            tree.prune(n)
        finished.extend(n for n in kept if tree.status[n] == TERMINAL)
        frontier = [n for n in kept if tree.status[n] != TERMINAL and ctx.expandable(n)]
    return select_answer(tree, finished, cfg.selection, cfg.aggregate)
