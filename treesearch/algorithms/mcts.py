"""Monte-Carlo tree search over reasoning steps, with UCT or PUCT selection.

Selection uses :func:`treesearch.policies.uct_value` (Kocsis & Szepesvári, 2006) or
:func:`treesearch.policies.puct_value` (Silver et al., 2017) with priors from the generator's
step log-probabilities. ``parallel`` simulations are in flight per tree at once, kept apart
by virtual loss (Chaslot et al., 2008). One simulation:

  1. select: descend by the policy to a leaf, adding virtual loss on the path; with
     progressive widening (``widen_c > 0``) stop early at a node due more children;
  2. expand: sample ``expansions`` next steps from the leaf (a terminal leaf is not expanded);
  3. evaluate: each new child's value is its PRM score (``evaluation: prm``) or the PRM
     score of the last step of a rollout from it to the end (``evaluation: rollout``, one
     sampled continuation; rollout steps are counted in the ledger but not kept in the tree);
  4. backup: each child's value is added along its path; the leaf's virtual loss is removed.

A terminal leaf is re-evaluated by its own PRM score, so search effort piles onto finished
chains the verifier likes. The answer is the most-visited finished chain
(``final: most_visited``) or the best-scored one (``final: best_value``).

Tree-parallel: several search workers can run :func:`mcts_shared` on one tree held by a store
(:mod:`treesearch.shared_tree`), with the same selection and backup rules.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from treesearch.context import SearchContext
from treesearch.policies import SelectionPolicy, WideningRule, make_policy, progressive_widening, select_leaf
from treesearch.protocol import GeneratedStep
from treesearch.selection import Aggregate, chain_score, select_answer
from treesearch.tree import ROOT, TERMINAL, Tree


@dataclass
class MCTSConfig:
    simulations: int = 32  # simulations per problem (each expands one leaf)
    parallel: int = 4  # simulations in flight per tree (virtual loss keeps them apart)
    expansions: int = 4  # children sampled per expanded leaf
    policy: Literal["uct", "puct"] = "puct"
    c: float = 1.25  # exploration constant
    widen_c: float = (
        0.5  # progressive widening: up to expansions*max(1, floor(widen_c*N^widen_alpha)) children
    )
    widen_alpha: float = 0.5  # (widen_c = 0: a node is expanded once, plain MCTS)
    evaluation: Literal["prm", "rollout"] = "prm"
    final: Literal["best_value", "most_visited"] = "best_value"  # most_visited: most-visited finished chain
    aggregate: Aggregate = "last"  # chain score used as a node's value and by best_value


def select_leaves(
    tree: Tree, n: int, policy: SelectionPolicy, widen: WideningRule, expandable: Callable[[int], bool]
) -> tuple[list[list[int]], list[list[int]], int]:
    """Up to ``n`` simulations' selections, virtual loss applied: the paths of distinct leaves to
    expand, of terminal leaves to back up with their own value, and how many simulations
    that is. An open dead end (it can never finish) is pruned: a simulation spent. A leaf
    already chosen in this wave spends none: its selection is undone and the wave ends there
    (the next selection would find the same leaf)."""
    to_expand: list[list[int]] = []
    terminals: list[list[int]] = []
    chosen: set[int] = set()
    spent = 0
    for _ in range(n):
        path = select_leaf(tree, policy, widen=widen)
        leaf = path[-1]
        if leaf in chosen:
            tree.apply_virtual_loss(path, -1)
            break
        spent += 1
        if tree.status[leaf] == TERMINAL:
            terminals.append(path)
        elif expandable(leaf):
            to_expand.append(path)
        else:
            tree.apply_virtual_loss(path, -1)
            tree.prune(leaf)
            continue
        chosen.add(leaf)
    return to_expand, terminals, spent


async def mcts(ctx: SearchContext, cfg: MCTSConfig) -> int | None:
    tree = ctx.tree
    policy = make_policy(cfg.policy, cfg.c)
    widen = progressive_widening(cfg.expansions, cfg.widen_c, cfg.widen_alpha, ctx.expandable)
    done = 0
    while done < cfg.simulations and not ctx.exhausted:
        wave = min(cfg.parallel, cfg.simulations - done)
        paths, terminals, spent = select_leaves(tree, wave, policy, widen, ctx.expandable)
        done += spent
        for path in terminals:
            tree.backup(path[-1], node_value(tree, path[-1], cfg), virtual_loss=1)
        to_expand = [p[-1] for p in paths]
        groups = await ctx.expand(to_expand, cfg.expansions)
        children = [c for g in groups for c in g]
        await ctx.score(children)
        values = await _rollout_values(ctx, children) if cfg.evaluation == "rollout" else {}
        for leaf, group in zip(to_expand, groups, strict=True):
            # the simulation is no longer in flight; each child (none if the budget refused
            # the expansion) is backed up with its value
            tree.backup_expansion(leaf, group, [values.get(c, node_value(tree, c, cfg)) for c in group])
    return final_answer(tree, cfg)


async def mcts_shared(ctx: SearchContext, cfg: MCTSConfig, store: SharedStore) -> None:
    """One worker's part of a tree-parallel MCTS over a tree in a shared store
    (:mod:`treesearch.shared_tree`): select there, expand and score here (this worker's budget
    and replicas), commit there, until the store has no simulation left. ``evaluation:
    rollout`` is not supported here (a rollout's chain would need the worker to hold the tree)."""
    while not ctx.exhausted:
        leaves = await ctx.outside(store.select(cfg.parallel))
        if leaves is None:
            return
        if not leaves:  # the tree's simulations in flight are all taken: wait for a commit
            await ctx.outside(asyncio.sleep(0.002))
            continue
        results = await ctx.sample([(lf.node, lf.prefix_ids, cfg.expansions, lf.nonce) for lf in leaves])
        news = [
            [] if res is None else ctx.new_steps(lf.steps, res)
            for lf, res in zip(leaves, results, strict=True)
        ]
        chains = [
            (lf.node, (*lf.steps, step.text)) for lf, new in zip(leaves, news, strict=True) for step, _ in new
        ]
        scores = iter(await ctx.score_chains(chains))
        commits = [
            (lf.ticket, new, [next(scores) for _ in new], -1 if res is None else res.replica)
            for lf, new, res in zip(leaves, news, results, strict=True)
        ]
        await ctx.outside(store.commit(commits))


class SharedStore(Protocol):
    """A worker's handle on one shared tree (``treesearch.shared_tree`` calls, bound to it)."""

    async def select(self, n: int) -> list[Any] | None: ...

    async def commit(self, expansions: list[Any]) -> None: ...


def node_value(tree: Tree, node: int, cfg: MCTSConfig) -> float:
    return chain_score(tree, node, cfg.aggregate) if node != ROOT else 0.0


async def _rollout_values(ctx: SearchContext, children: list[int]) -> dict[int, float]:
    """Value of each open child: PRM score of the last step of one sampled continuation."""
    tree, task = ctx.tree, ctx.task
    extra: dict[int, list[GeneratedStep]] = {c: [] for c in children if tree.status[c] != TERMINAL}
    live = list(extra)
    while live and not ctx.exhausted:
        steps = await ctx.continue_chains([(c, extra[c]) for c in live])
        still = []
        for c, step in zip(live, steps, strict=True):
            if step is None:
                continue
            extra[c].append(step)
            chain = [*tree.steps(c), *(s.text for s in extra[c])]
            if not (task.is_terminal(ctx.problem, chain) or len(chain) >= task.max_depth):
                still.append(c)
        live = still
    chains = [(c, (*tree.steps(c), *(s.text for s in ex))) for c, ex in extra.items()]
    values = {}
    for c, scores in zip(extra, await ctx.score_chains(chains), strict=True):
        if scores is not None:
            values[c] = scores[-1]
    return values


def final_answer(tree: Tree, cfg: MCTSConfig) -> int | None:
    """The most-visited scored finished chain (ties: higher Q, then lower id), or the
    best-scored one (``best_value``)."""
    scored = [n for n in tree.terminals() if not math.isnan(tree.prm_score[n])]
    if cfg.final == "most_visited" and scored:
        return max(scored, key=lambda n: (tree.visits[n], tree.q_value(n), -n))
    return select_answer(tree, scored, cfg.aggregate)
