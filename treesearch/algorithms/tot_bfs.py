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

Sized by the budget (``auto``, :mod:`treesearch.sizing`, ``S`` step samples affordable, ``D``
the expected depth): ``root_samples`` = ``ROOT_SHARE x S`` proposals from the root (as beam
search seeds its beam), then every later depth gets ``(S - root) / (D - 1)`` samples:
``samples`` = ``min(4, that)`` per kept state, ``breadth`` the rest. With no limit, or a
pinned ``samples`` or ``breadth``: ToT's ``b`` 5 and 8 samples (each where not pinned), the
root like any state.
"""

from __future__ import annotations

from treesearch.context import SearchContext
from treesearch.schema import Auto, Count, Count0, section
from treesearch.selection import Aggregate, Selection, chain_score, drop_duplicates, select_answer
from treesearch.sizing import ROOT_SHARE, sized
from treesearch.tree import ROOT, TERMINAL


@section
class ToTBFSConfig:
    breadth: Count | Auto = "auto"  # states kept per depth (ToT's b)
    samples: Count | Auto = "auto"  # proposals per kept state per depth
    root_samples: Count0 | Auto = "auto"  # proposals from the root (0: samples)
    selection: Selection = "last"  # how the final answer is chosen among finished chains
    aggregate: Aggregate = "last"  # chain score used as the state value


async def tot_bfs(ctx: SearchContext, cfg: ToTBFSConfig) -> int | None:
    tree = ctx.tree
    a = ctx.allowance()
    pinned = isinstance(cfg.samples, int) or isinstance(cfg.breadth, int)
    if a.limited and not pinned:
        root = sized(cfg.root_samples, min(ROOT_SHARE * a.samples, a.worst))
        per_depth = min((a.samples - root) / max(1, a.depth - 1), a.worst)
        samples = sized(cfg.samples, min(4, per_depth))
        breadth = sized(cfg.breadth, per_depth / samples)
    else:
        samples, breadth = sized(cfg.samples, 8), sized(cfg.breadth, 5)
        root = cfg.root_samples if isinstance(cfg.root_samples, int) and cfg.root_samples else samples
    finished: list[int] = []
    frontier = [ROOT]
    while frontier and not ctx.exhausted:
        kids = await ctx.expand(frontier, root if frontier == [ROOT] else samples)
        proposals = drop_duplicates(tree, [c for ks in kids for c in ks])
        await ctx.score(proposals)
        proposals.sort(key=lambda n: (-chain_score(tree, n, cfg.aggregate), n))
        kept, dropped = proposals[:breadth], proposals[breadth:]
        for n in dropped:
            tree.prune(n)
        finished.extend(n for n in kept if tree.status[n] == TERMINAL)
        frontier = [n for n in kept if tree.status[n] != TERMINAL and ctx.expandable(n)]
    return select_answer(tree, finished, cfg.selection, cfg.aggregate)
