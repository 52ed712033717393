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

Sized by the budget (``auto``, :mod:`treesearch.sizing`, ``S`` the step samples the budget
affords when the search starts): ``root_expansions`` = ``ROOT_SHARE x S``; ``expansions`` 2;
``width`` is set again at every depth to what is left split evenly over the depths still to
go (``left / (expansions x depths to go)``; one chain with fewer samples when that is under
one chain's ``expansions``), and no depth asks for more samples than can be reserved at
once, so the search reaches a finished chain at any budget. With no limit, or
a pinned ``width`` or ``expansions``: ``width`` 4, ``expansions`` 4, ``root_expansions``
``width x expansions`` (each where not pinned).
"""

from __future__ import annotations

from treesearch.context import SearchContext
from treesearch.schema import Auto, Count, Count0, Flag, section
from treesearch.selection import Aggregate, Selection, chain_score, drop_duplicates, select_answer
from treesearch.sizing import ROOT_SHARE, sized
from treesearch.tree import ROOT, TERMINAL


@section
class BeamConfig:
    width: Count | Auto = "auto"  # chains kept per depth
    expansions: Count | Auto = "auto"  # samples per kept chain per depth
    root_expansions: Count0 | Auto = "auto"  # samples at the root; 0 means width * expansions
    selection: Selection = "last"  # how the final answer is chosen among finished chains
    aggregate: Aggregate = "last"  # chain score used to rank beams
    dedup: Flag = False  # merge identical chains before ranking (they would share slots)


def root_shape(ctx: SearchContext, cfg: BeamConfig) -> tuple[int, int, int]:
    """``(width, expansions, root samples)`` when the search starts."""
    a = ctx.allowance()
    if not a.limited or isinstance(cfg.width, int) or isinstance(cfg.expansions, int):  # a pinned shape
        width, expansions = sized(cfg.width, 4), sized(cfg.expansions, 4)
        return width, expansions, sized(cfg.root_expansions, width * expansions) or width * expansions
    expansions = sized(cfg.expansions, 2)
    width = sized(cfg.width, (1 - ROOT_SHARE) * a.samples / (expansions * max(1, a.depth - 1)))
    root = sized(cfg.root_expansions, min(ROOT_SHARE * a.samples, a.worst)) or width * expansions
    return width, expansions, root


def width_now(
    ctx: SearchContext, cfg: BeamConfig, width: int, expansions: int, depth: int
) -> tuple[int, int]:
    """``(width, samples per chain)`` for the expansion of chains at ``depth``: pinned, or sized
    by what is left over the depths still to go (one chain with fewer samples when even one
    chain's ``expansions`` could not be reserved)."""
    a = ctx.allowance()
    if not a.limited or isinstance(cfg.width, int) or isinstance(cfg.expansions, int):  # a pinned shape
        return width, expansions
    samples = max(1, int(min(a.samples / max(1, a.depth - depth), a.worst)))
    if samples < expansions:
        return 1, samples
    return max(1, samples // expansions), expansions


async def beam_search(ctx: SearchContext, cfg: BeamConfig, seeds: list[int] | None = None) -> int | None:
    """``seeds``: first steps already sampled (and scored) to start from instead of the root's
    expansion (:mod:`treesearch.algorithms.adaptive` probes with them)."""
    tree = ctx.tree
    width, expansions, root = root_shape(ctx, cfg)
    finished: list[int] = []
    done = 0
    if seeds is None:
        (children,) = await ctx.expand([ROOT], root)
    else:
        children = list(seeds)
    while children:
        if cfg.dedup:
            children = drop_duplicates(tree, children)
        await ctx.score(children)
        finished.extend(c for c in children if tree.status[c] == TERMINAL)
        width, step_samples = width_now(ctx, cfg, width, expansions, tree.depth[children[0]])
        ranked = sorted(children, key=lambda n: (-chain_score(tree, n, cfg.aggregate), n))
        slots, dropped = ranked[: max(0, width - done)], ranked[max(0, width - done) :]
        for n in dropped:
            tree.prune(n)
        done += sum(tree.status[n] == TERMINAL for n in slots)
        beams = [n for n in slots if tree.status[n] != TERMINAL and ctx.expandable(n)]
        if done >= width or ctx.exhausted or not beams:
            break
        kids = await ctx.expand(beams, step_samples)
        children = [c for ks in kids for c in ks]
    return select_answer(tree, finished, cfg.selection, cfg.aggregate)
