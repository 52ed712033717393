"""Selection policies: small pure functions of (tree, parent, child) -> score.

A policy is any ``Callable[[Tree, int, int], float]``; :func:`select_leaf` descends by argmax.
Virtual losses count as visits of value 0 (Chaslot et al., 2008, "Parallel Monte-Carlo Tree
Search"), so several simulations in flight on one tree spread over different branches.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

from treesearch.tree import ROOT, Tree

SelectionPolicy = Callable[[Tree, int, int], float]


def uct_value(tree: Tree, parent: int, child: int, c: float = math.sqrt(2)) -> float:
    """UCT (Kocsis & Szepesvári, 2006): Q(child) + c * sqrt(ln N(parent) / N(child)).

    N includes virtual losses. An unvisited child scores +inf so every child is tried once.
    """
    n_child = tree.visits[child] + tree.virtual_loss[child]
    if n_child == 0:
        return math.inf
    n_parent = max(1, tree.visits[parent] + tree.virtual_loss[parent])
    return tree.q_value(child) + c * math.sqrt(math.log(n_parent) / n_child)


def puct_value(tree: Tree, parent: int, child: int, c: float = 1.25) -> float:
    """PUCT (Silver et al., 2017, AlphaGo Zero): Q(child) + c * P(child) * sqrt(N(parent)) / (1 + N(child)).

    P is the generator's prior (softmax of step log-probs over the expansion). An unvisited
    child has Q = 0, the pessimistic end of the [0, 1] value range.
    """
    n_child = tree.visits[child] + tree.virtual_loss[child]
    n_parent = tree.visits[parent] + tree.virtual_loss[parent]
    return tree.q_value(child) + c * tree.prior[child] * math.sqrt(n_parent) / (1 + n_child)


def make_policy(name: str, c: float) -> SelectionPolicy:
    """``"uct"`` or ``"puct"`` with exploration constant ``c``."""
    table = {"uct": uct_value, "puct": puct_value}
    if name not in table:
        raise ValueError(f"unknown selection policy {name!r}; expected one of {sorted(table)}")
    return partial(table[name], c=c)


def select_child(tree: Tree, node: int, policy: SelectionPolicy) -> int | None:
    """argmax of ``policy`` over the live children of ``node`` (ties: lowest id), or None."""
    best, best_score = None, -math.inf
    for child in tree.live_children(node):
        score = policy(tree, node, child)
        if best is None or score > best_score:
            best, best_score = child, score
    return best


WideningRule = Callable[[Tree, int], bool]


def progressive_widening(
    expansions: int, c: float, alpha: float, can_expand: Callable[[int], bool]
) -> WideningRule:
    """Progressive widening (Coulom, 2007; Couëtoux et al., 2011): a node with N visits may
    hold up to ``expansions * max(1, floor(c * N ** alpha))`` children, so a node whose few
    sampled steps were all bad gets new samples as it is revisited. ``c = 0`` disables it."""

    def widen(tree: Tree, node: int) -> bool:
        if c <= 0 or not can_expand(node):
            return False
        cap = expansions * max(1, math.floor(c * tree.visits[node] ** alpha))
        return len(tree.children[node]) < cap

    return widen


def select_leaf(
    tree: Tree, policy: SelectionPolicy, virtual_loss: int = 1, widen: WideningRule | None = None
) -> list[int]:
    """Descends from the root by ``policy`` to a node without live children, or to a node
    that ``widen`` says should get more children first.

    Applies ``virtual_loss`` to every node of the returned path (root..leaf); the caller
    removes it with ``tree.backup(leaf, value, virtual_loss)``.
    """
    path = [ROOT]
    node = ROOT
    while (
        not (widen is not None and tree.children[node] and widen(tree, node))
        and (child := select_child(tree, node, policy)) is not None
    ):
        path.append(child)
        node = child
    tree.apply_virtual_loss(path, virtual_loss)
    return path
