"""Monte-Carlo tree search over reasoning steps, with UCT or PUCT selection.

One simulation (``parallel`` in flight per tree, kept apart by virtual loss; Chaslot et al.,
2008): select a leaf by :func:`~treesearch.policies.uct_value` (Kocsis & Szepesvári, 2006) or
:func:`~treesearch.policies.puct_value` (Silver et al., 2017; priors from the steps'
log-probabilities), stopping early at a node due more children (progressive widening); expand
it by ``expansions`` samples; value each child by its PRM score or by a rollout's; back the
values up. The answer is the best-scored (or most-visited) finished chain. Before the first
simulation the root gets ``root_expansions`` new samples (a small policy's failures are mostly
hopeless first steps); with ``descend`` a simulation goes on from its best new child to a
finished chain (LATS, Zhou et al., 2024). :func:`shape` says how a budget sizes it (``auto``);
:func:`mcts_shared` is one worker's part of a tree several workers share
(:mod:`treesearch.shared_tree`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Callable
from typing import Any, Literal, Protocol

from treesearch.context import SearchContext
from treesearch.metered import GenerationAsk
from treesearch.policies import SelectionPolicy, WideningRule, make_policy, progressive_widening, select_leaf
from treesearch.protocol import GeneratedStep
from treesearch.schema import Auto, Count, Count0, Flag, Float, section
from treesearch.selection import Aggregate, chain_score, select_answer
from treesearch.sizing import ROOT_SHARE, Allowance, sized
from treesearch.tree import PRUNED, ROOT, TERMINAL, Tree

UNBOUNDED = 1 << 30
IDLE_WAVES = 8  # unbounded simulations stop after this many waves in a row expanded nothing


@section
class MCTSConfig:
    simulations: Count | Auto = "auto"  # simulations per problem (each expands one leaf)
    parallel: Count | Auto = "auto"  # simulations in flight per tree (virtual loss keeps them apart)
    expansions: Count | Auto = "auto"  # children sampled per expanded leaf
    root_expansions: Count0 | Auto = "auto"  # children of the root's first expansion
    dedup: Flag = False  # merge identical children as they arrive
    # a simulation goes on expanding its best child (value > 0) until a finished chain, the
    # steps kept in the tree; auto: when the shape is sized by the budget
    descend: Flag | Auto = "auto"
    policy: Literal["uct", "puct"] = "puct"
    c: Float(ge=0, le=1000) = 1.25  # exploration constant
    # progressive widening: up to expansions * max(1, floor(widen_c * N^widen_alpha)) children
    # (widen_c = 0: a node is expanded once, plain MCTS)
    widen_c: Float(ge=0, le=1000) = 0.5
    widen_alpha: Float(ge=0, le=1) = 0.5
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


def shape(cfg: MCTSConfig, a: Allowance) -> tuple[int, int, int, int]:
    """``(simulations, expansions, root samples, parallel)``.

    Sized by the budget (``auto``; ``S`` step samples affordable, :mod:`treesearch.sizing`):
    simulations until the budget is spent (or nothing is left to expand), 2 expansions,
    ``ROOT_SHARE x S`` root samples (at most what can be reserved at once), and half the
    root-to-leaf descents the rest affords in flight (1 to 4). With no limit, or pinned
    ``simulations`` or ``expansions``: 32 simulations, 4 expansions, 4 in flight (each where
    not pinned) and no separate root expansion."""
    if not a.limited or isinstance(cfg.simulations, int) or isinstance(cfg.expansions, int):  # pinned
        expansions = sized(cfg.expansions, 4)
        root = cfg.root_expansions if isinstance(cfg.root_expansions, int) else 0
        return sized(cfg.simulations, 32), expansions, root, sized(cfg.parallel, 4)
    expansions = sized(cfg.expansions, 2)
    root = sized(cfg.root_expansions, min(ROOT_SHARE * a.samples, a.worst))
    # root-to-leaf descents the rest affords; half of them in flight at once (at most 4), so a
    # small budget still reaches finished chains instead of widening the first depth
    descents = (a.samples - root) / (expansions * max(1, a.depth - 1))
    return sized(cfg.simulations, UNBOUNDED), expansions, root, sized(cfg.parallel, min(4, descents / 2))


async def mcts(ctx: SearchContext, cfg: MCTSConfig) -> int | None:
    tree = ctx.tree
    simulations, expansions, root, parallel = shape(cfg, ctx.allowance())
    policy = make_policy(cfg.policy, cfg.c)
    widen = progressive_widening(expansions, cfg.widen_c, cfg.widen_alpha, ctx.expandable)
    sized_shape = ctx.allowance().limited and not isinstance(cfg.simulations, int)
    descend = cfg.descend if isinstance(cfg.descend, bool) else sized_shape
    if root:  # each call (a job pool's round, too) starts with new first steps
        (children,) = await ctx.expand([ROOT], root)
        await _evaluate(ctx, cfg, ROOT, children, virtual_loss=0)
    done = idle = 0
    going: list[list[int]] = []  # simulations still descending (their virtual loss applied)
    while (going or done < simulations) and not ctx.exhausted and idle < IDLE_WAVES:
        paths, going = going, []
        if len(paths) < parallel and done < simulations:
            wave = min(parallel - len(paths), simulations - done)
            new, terminals, spent = select_leaves(tree, wave, policy, widen, ctx.expandable)
            done += spent
            paths += new
            for path in terminals:
                tree.backup(path[-1], node_value(tree, path[-1], cfg), virtual_loss=1)
        idle = 0 if paths else idle + 1
        to_expand = [p[-1] for p in paths]
        k = expansions
        if not isinstance(cfg.expansions, int) and to_expand:  # sized: fewer samples, not none
            k = max(1, min(k, int(ctx.allowance().worst / len(to_expand))))
        groups = await ctx.expand(to_expand, k)
        if cfg.dedup:
            groups = [_merge(tree, g) for g in groups]
        children = [c for g in groups for c in g]
        await ctx.score(children)
        values = await _rollout_values(ctx, children) if cfg.evaluation == "rollout" else {}
        for path, group in zip(paths, groups, strict=True):
            # the expansion is no longer in flight; each child (none if the budget refused
            # the expansion) is backed up with its value
            vals = [values.get(c, node_value(tree, c, cfg)) for c in group]
            tree.backup_expansion(path[-1], group, vals)
            if descend:  # the simulation goes on from its best open child (LATS-style)
                nxt = max(
                    ((v, -c) for c, v in zip(group, vals, strict=True) if v > 0 and ctx.expandable(c)),
                    default=None,
                )
                if nxt is not None:
                    going.append([*path, -nxt[1]])
                    tree.apply_virtual_loss(going[-1], 1)
    return final_answer(tree, cfg)


def _merge(tree: Tree, children: list[int]) -> list[int]:
    """``children`` without those repeating a sibling's step (pruned)."""
    parent = tree.parent[children[0]] if children else ROOT
    new = set(children)
    seen = {tree.step_text[c] for c in tree.children[parent] if c not in new and tree.status[c] != PRUNED}
    kept = []
    for c in children:
        if tree.step_text[c] in seen:
            tree.prune(c)
        else:
            seen.add(tree.step_text[c])
            kept.append(c)
    return kept


SHARED_SIMULATIONS = 4096  # auto simulations of a shared tree under a budget (which ends it first)


def pinned(cfg: MCTSConfig, limited: bool) -> MCTSConfig:
    """``cfg`` with its ``auto`` fields fixed, for a tree several workers share (it
    knows no budget: ``limited`` says whether the workers' budgets will end the search; a
    selection of a finished leaf is a simulation too, so a bound ends a fully grown tree)."""
    simulations, expansions, _, parallel = shape(cfg, Allowance(float("inf"), float("inf"), 1))
    if limited:
        simulations = sized(cfg.simulations, SHARED_SIMULATIONS)
    return dataclasses.replace(
        cfg, simulations=simulations, expansions=expansions, root_expansions=0, parallel=parallel
    )


async def _evaluate(
    ctx: SearchContext, cfg: MCTSConfig, leaf: int, children: list[int], virtual_loss: int
) -> None:
    if cfg.dedup:
        children = _merge(ctx.tree, children)
    await ctx.score(children)
    values = await _rollout_values(ctx, children) if cfg.evaluation == "rollout" else {}
    ctx.tree.backup_expansion(
        leaf, children, [values.get(c, node_value(ctx.tree, c, cfg)) for c in children], virtual_loss
    )


async def mcts_shared(ctx: SearchContext, cfg: MCTSConfig, shared: SharedTreeHandle) -> None:
    """One worker's part of a tree-parallel MCTS over a shared tree
    (:mod:`treesearch.shared_tree`): select there, expand and score here (this worker's budget
    and replicas), commit there, until the shared tree has no simulation left. ``evaluation:
    rollout`` is not supported here (a rollout's chain would need the worker to hold the tree)."""
    fixed = pinned(cfg, True)
    expansions, parallel = fixed.expansions, fixed.parallel
    while not ctx.exhausted:
        leaves = await ctx.await_external(shared.select(parallel))
        if leaves is None:
            return
        if not leaves:  # the tree's simulations in flight are all taken: wait for a commit
            await ctx.await_external(asyncio.sleep(0.002))
            continue
        results = await ctx.sample(
            [GenerationAsk(lf.node, lf.prefix_ids, expansions, lf.nonce) for lf in leaves]
        )
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
        await ctx.await_external(shared.commit(commits))


class SharedTreeHandle(Protocol):
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
