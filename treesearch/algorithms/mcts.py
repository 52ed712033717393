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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from treesearch.engine import SearchContext
from treesearch.policies import make_policy, progressive_widening, select_leaf
from treesearch.protocol import GeneratedStep, ScoreRequest
from treesearch.selection import chain_score, select_answer
from treesearch.tree import ROOT, TERMINAL, Tree


@dataclass
class MCTSConfig:
    simulations: int = 32  # simulations per problem (each expands one leaf)
    parallel: int = 4  # simulations in flight per tree (virtual loss keeps them apart)
    expansions: int = 4  # children sampled per expanded leaf
    policy: str = "puct"  # uct | puct
    c: float = 1.25  # exploration constant
    widen_c: float = (
        0.5  # progressive widening: up to expansions*max(1, floor(widen_c*N^widen_alpha)) children
    )
    widen_alpha: float = 0.5  # (widen_c = 0: a node is expanded once, plain MCTS)
    evaluation: str = "prm"  # prm | rollout
    final: str = "best_value"  # best_value | most_visited (most-visited finished chain)
    aggregate: str = "last"  # chain score used as a node's value and by best_value


async def mcts(ctx: SearchContext, cfg: MCTSConfig) -> int | None:
    if cfg.evaluation not in ("prm", "rollout"):
        raise ValueError(f"mcts.evaluation must be 'prm' or 'rollout', got {cfg.evaluation!r}")
    if cfg.final not in ("most_visited", "best_value"):
        raise ValueError(f"mcts.final must be 'most_visited' or 'best_value', got {cfg.final!r}")
    tree = ctx.tree
    policy = make_policy(cfg.policy, cfg.c)
    widen = progressive_widening(cfg.expansions, cfg.widen_c, cfg.widen_alpha, ctx.expandable)
    done = 0
    while done < cfg.simulations and not ctx.exhausted:
        wave = min(cfg.parallel, cfg.simulations - done)
        leaves: list[int] = []
        for _ in range(wave):
            path = select_leaf(tree, policy, widen=widen)
            leaf = path[-1]
            if leaf in leaves:  # already being expanded in this wave: just undo
                tree.apply_virtual_loss(path, -1)
                continue
            if tree.status[leaf] != TERMINAL and not ctx.expandable(leaf):
                tree.apply_virtual_loss(path, -1)
                tree.prune(leaf)  # a dead end that can never finish
                continue
            leaves.append(leaf)
        done += wave
        for leaf in [n for n in leaves if tree.status[n] == TERMINAL]:
            tree.backup(leaf, _node_value(tree, leaf, cfg), virtual_loss=1)
        to_expand = [n for n in leaves if tree.status[n] != TERMINAL]
        groups = await ctx.expand(to_expand, cfg.expansions)
        children = [c for g in groups for c in g]
        await ctx.score(children)
        values = await _rollout_values(ctx, children) if cfg.evaluation == "rollout" else {}
        for leaf, group in zip(to_expand, groups, strict=True):
            tree.apply_virtual_loss(tree.path(leaf), -1)  # this simulation is no longer in flight
            for child in group:  # empty if the budget refused the expansion
                tree.backup(child, values.get(child, _node_value(tree, child, cfg)))
    return _final_answer(tree, cfg)


def _node_value(tree: Tree, node: int, cfg: MCTSConfig) -> float:
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
    reqs = [
        ScoreRequest(
            ctx.problem.id, c, tree.step_text[ROOT], (*tree.steps(c), *(s.text for s in ex)), ctx.question
        )
        for c, ex in extra.items()
    ]
    values = {}
    for c, scores in zip(extra, await ctx.score_chains(reqs), strict=True):
        if scores is not None:
            values[c] = scores[-1]
    return values


def _final_answer(tree: Tree, cfg: MCTSConfig) -> int | None:
    """The most-visited scored finished chain (ties: higher Q, then lower id), or the
    best-scored one (``best_value``)."""
    scored = [n for n in tree.terminals() if not math.isnan(tree.prm_score[n])]
    if cfg.final == "most_visited" and scored:
        return max(scored, key=lambda n: (tree.visits[n], tree.q_value(n), -n))
    return select_answer(tree, scored, cfg.aggregate)
