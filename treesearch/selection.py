"""Choosing the final answer among candidate terminal nodes (one mechanism for every algorithm).

Chain scores aggregate the PRM's step scores along the path (Lightman et al., 2023 use the
product; search-and-learn's default is the last step):
  ``last``: score of the final step; ``min``: the weakest step; ``prod``: product of steps.
Votes group candidates by normalised answer (Wang et al., 2023, self-consistency):
  ``vote``: the most frequent answer; ``weighted_vote``: the answer with the largest summed
  chain score. Ties go to the higher best chain score, then to the lower node id.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

from treesearch.tree import NO_PARENT, Tree

Aggregate = Literal["last", "min", "prod"]
Selection = Literal["last", "min", "prod", "vote", "weighted_vote"]
SELECTIONS: tuple[str, ...] = ("last", "min", "prod", "vote", "weighted_vote")


def _step_scores(tree: Tree, node: int) -> list[float]:
    # Unscored steps count as 0: an unverified chain must not outrank a verified one.
    return [0.0 if math.isnan(s) else s for s in (tree.prm_score[n] for n in tree.path(node)[1:])]


AGGREGATES: dict[str, Callable[[list[float]], float]] = {
    "last": lambda s: s[-1] if s else 0.0,
    "min": lambda s: min(s, default=0.0),
    "prod": lambda s: math.prod(s) if s else 0.0,
}


def chain_score(tree: Tree, node: int, aggregate: str = "last") -> float:
    """Aggregated PRM score of the chain root..node."""
    if aggregate == "last":  # the common case needs no walk up the tree
        s = tree.prm_score[node] if tree.parent[node] != NO_PARENT else math.nan
        return 0.0 if s != s else s  # NaN (unscored) counts as 0
    return AGGREGATES[aggregate](_step_scores(tree, node))


def drop_duplicates(tree: Tree, nodes: Sequence[int]) -> list[int]:
    """``nodes`` with repeated chains removed: the first node of each distinct step sequence
    is kept, later ones are pruned (ToT merges identical states: its ``list(set(new_ys))``).

    A small policy often samples the same step several times; without merging, copies of one
    chain can fill every slot of a beam and the search degenerates to a single chain.
    """
    kept: list[int] = []
    seen: set[tuple[str, ...]] = set()
    for n in nodes:
        key = tuple(tree.steps(n))
        if key in seen:
            tree.prune(n)
            continue
        seen.add(key)
        kept.append(n)
    return kept


def best_by_score(tree: Tree, candidates: Sequence[int], aggregate: str = "last") -> int | None:
    """Highest aggregated chain score; ties to the lower node id."""
    best, best_score = None, -math.inf
    for n in sorted(candidates):
        s = chain_score(tree, n, aggregate)
        if s > best_score:
            best, best_score = n, s
    return best


def select_answer(
    tree: Tree, candidates: Sequence[int], selection: str = "last", aggregate: str = "last"
) -> int | None:
    """The chosen node among ``candidates`` (usually terminal nodes), or None if empty.

    ``selection`` is an aggregate name (pick the best chain) or a vote; votes weigh chains by
    ``aggregate`` (``weighted_vote``) or count them (``vote``).
    """
    if selection not in SELECTIONS:
        raise ValueError(f"unknown selection {selection!r}; expected one of {SELECTIONS}")
    if not candidates:
        return None
    if selection in AGGREGATES:
        return best_by_score(tree, candidates, selection)
    groups: dict[str, list[int]] = {}
    for n in sorted(candidates):
        key = tree.answer[n] if tree.answer[n] is not None else f"<none:{n}>"
        groups.setdefault(key, []).append(n)
    weight = (lambda n: 1.0) if selection == "vote" else (lambda n: chain_score(tree, n, aggregate))

    def rank(members: list[int]) -> tuple[float, float, int]:
        best = max(chain_score(tree, n, aggregate) for n in members)
        return (sum(weight(n) for n in members), best, -members[0])

    winner = max(groups.values(), key=rank)
    return best_by_score(tree, winner, aggregate)
