"""Step-level beam search with a PRM (Snell et al., 2024; search-and-learn's ``beam_search``).

Keep ``width`` chains. At each depth, sample ``expansions`` next steps for every kept open
chain and score them with the PRM; the best ``width - done`` children by score take the
slots, where ``done`` counts finished chains that won a slot earlier. Finished chains that
win a slot are set aside as answers; open ones are expanded next. At the root the beam is
seeded with ``root_expansions`` samples (default ``width * expansions``): where a policy's
first step decides most failures, samples spent at the root buy more coverage than deeper
ones. With ``dedup`` (search-and-learn's ``filter_duplicates``), identical chains are merged
before ranking, so copies of one sample cannot take several slots. Every finished chain stays
a candidate, but only well-scored ones use up the beam (a junk "final answer" must not end
the search).

    children = score(dedup?(expand(root, root_expansions or width * expansions)))
    while children and done < width:
        slots = top_(width - done)(children)
        done += |terminal(slots)|; finished += terminal(children)
        children = score(dedup?(expand(open(slots), expansions)))
    return select(finished)
"""

from __future__ import annotations

from dataclasses import dataclass

from treesearch.context import SearchContext
from treesearch.selection import Aggregate, Selection, chain_score, drop_duplicates, select_answer
from treesearch.tree import ROOT, TERMINAL


@dataclass
class BeamConfig:
    width: int = 4  # chains kept per depth
    expansions: int = 4  # samples per kept chain per depth
    root_expansions: int = 0  # samples at the root; 0 means width * expansions
    selection: Selection = "last"  # how the final answer is chosen among finished chains
    aggregate: Aggregate = "last"  # chain score used to rank beams
    dedup: bool = False  # merge identical chains before ranking (they would share slots)


async def beam_search(ctx: SearchContext, cfg: BeamConfig) -> int | None:
    tree = ctx.tree
    finished: list[int] = []
    done = 0
    (children,) = await ctx.expand([ROOT], cfg.root_expansions or cfg.width * cfg.expansions)
    while children:
        if cfg.dedup:
            children = drop_duplicates(tree, children)
        await ctx.score(children)
        finished.extend(c for c in children if tree.status[c] == TERMINAL)
        ranked = sorted(children, key=lambda n: (-chain_score(tree, n, cfg.aggregate), n))
        slots, dropped = ranked[: cfg.width - done], ranked[cfg.width - done :]
        for n in dropped:
            tree.prune(n)
        done += sum(tree.status[n] == TERMINAL for n in slots)
        beams = [n for n in slots if tree.status[n] != TERMINAL and ctx.expandable(n)]
        if done >= cfg.width or ctx.exhausted or not beams:
            break
        kids = await ctx.expand(beams, cfg.expansions)
        children = [c for ks in kids for c in ks]
    return select_answer(tree, finished, cfg.selection, cfg.aggregate)
