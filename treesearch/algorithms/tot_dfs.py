"""Tree-of-thoughts depth-first search (Yao et al., 2023, Algorithm 2, ToT-DFS).

Expand the current state with ``samples`` proposals, value them with the PRM, and descend
into the best child first. Children valued below ``threshold`` are pruned (ToT's v_th);
when every child of a state fails, backtrack to its parent's next-best child. Stop at the
first finished chain valued at or above the threshold, or when the budget runs out (then
the best finished chain seen is returned).

    def dfs(s):
        if terminal(s): return s if V(s) >= v_th else None
        for c in sorted(score(expand(s, samples)), by value, best first):
            if V(c) < v_th: prune(c); continue
            if (found := dfs(c)): return found
        return None

Sized by the budget (``auto``, :mod:`treesearch.sizing`): ``samples`` =
``min(5, S / (2 x depth))`` (at least 1), so a first descent and some backtracking fit; DFS
goes on until it finds a chain or the budget runs out, starting again from the root (new
proposals there) whenever every state it tried was pruned. With no limit: 5 samples, one pass.
"""

from __future__ import annotations

from treesearch.context import SearchContext
from treesearch.schema import Auto, Count, Probability, section
from treesearch.selection import Aggregate, Selection, chain_score, select_answer
from treesearch.sizing import sized
from treesearch.tree import ROOT, TERMINAL


@section
class ToTDFSConfig:
    samples: Count | Auto = "auto"  # proposals per expanded state
    threshold: Probability = 0.5  # v_th: children valued below it are pruned
    selection: Selection = "last"  # fallback choice among finished chains if none passes
    aggregate: Aggregate = "last"  # chain score used as the state value


async def tot_dfs(ctx: SearchContext, cfg: ToTDFSConfig) -> int | None:
    tree = ctx.tree
    a = ctx.allowance()
    samples = sized(cfg.samples, min(5, a.samples / (2 * a.depth), a.worst) if a.limited else 5)
    finished: list[int] = []

    async def dfs(node: int) -> int | None:
        if tree.status[node] == TERMINAL:
            finished.append(node)
            return node if chain_score(tree, node, cfg.aggregate) >= cfg.threshold else None
        if not ctx.expandable(node) or ctx.exhausted:
            return None
        (kids,) = await ctx.expand([node], samples)
        await ctx.score(kids)
        for child in sorted(kids, key=lambda n: (-chain_score(tree, n, cfg.aggregate), n)):
            if chain_score(tree, child, cfg.aggregate) < cfg.threshold:
                tree.prune(child)
                continue
            if (found := await dfs(child)) is not None:
                return found
        return None

    found = await dfs(ROOT)
    # sized by the budget: a search that ran out of states to try starts again from the root
    # (new proposals there) while the budget lasts
    while found is None and a.limited and not isinstance(cfg.samples, int) and not ctx.exhausted:
        found = await dfs(ROOT)
    return found if found is not None else select_answer(tree, finished, cfg.selection, cfg.aggregate)
