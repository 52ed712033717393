"""Trees searched by several workers at once: tree-parallel MCTS (Chaslot, Winands & van den Herik,
2008, "Parallel Monte-Carlo Tree Search").

When a job has fewer problems than search workers, the workers share each problem's tree
through a :class:`SharedTree` (in a Ray actor: :class:`actors.shared_tree.SharedTreeActor`). A
worker's round trip is two calls:

1. ``select(problem, n)``: up to ``n`` leaves chosen by the MCTS policy, virtual loss added on
   their paths so concurrent workers spread over branches; simulations are handed out
   until the problem's ``simulations`` are used up. A terminal leaf is backed up right there
   (its value is its chain score). Each leaf comes with what the worker needs to expand it
   without the tree: its prefix token ids, its steps and a nonce (distinct samples each time a
   leaf is expanded, whichever worker does it).
2. ``commit(problem, [(ticket, new steps, their chain scores)])``: the children join the
   tree, their PRM scores are set, their values are backed up and the virtual loss goes.

``abandon`` takes back the virtual loss of selections that will never be committed (a
budget refusal, a dead worker). The selection and backup rules are those of
:func:`treesearch.algorithms.mcts.mcts`, shared code, so one worker on a shared tree runs the
same search as the single-process MCTS.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from treesearch.algorithms.mcts import MCTSConfig, final_answer, node_value, pinned, select_leaves
from treesearch.policies import make_policy, progressive_widening
from treesearch.protocol import encode_ids
from treesearch.tree import ROOT, TERMINAL, Step, Tree


class Leaf(NamedTuple):
    """A leaf handed to a worker to expand (one simulation in flight)."""

    ticket: int
    node: int
    nonce: int
    prefix_ids: bytes
    steps: tuple[str, ...]


@dataclass
class _Shared:
    tree: Tree
    cfg: MCTSConfig
    max_depth: int
    issued: int = 0  # simulations handed out
    tickets: dict[int, tuple[str, list[int]]] = field(default_factory=dict)  # ticket -> (worker, path)
    expanded: dict[int, int] = field(default_factory=dict)  # node -> expansions so far
    terminal_backups: int = 0
    prefix: dict[int, bytes] = field(default_factory=dict)


class SharedTree:
    """Open shared trees by problem id (see module docstring)."""

    def __init__(self) -> None:
        self._trees: dict[str, _Shared] = {}
        self._next_ticket = 0

    def open(
        self,
        problem_id: str,
        prompt: str,
        prompt_ids: list[int],
        max_depth: int,
        cfg: MCTSConfig,
        limited: bool = True,
    ) -> None:
        """A tree for ``problem_id``; ``limited``: the workers' budgets end its search (``auto``
        shapes are fixed here, see :func:`treesearch.algorithms.mcts.pinned`)."""
        tree = Tree(prompt, prompt_ids, problem_id)
        self._trees[problem_id] = _Shared(
            tree, pinned(cfg, limited), max_depth, prefix={ROOT: encode_ids(prompt_ids)}
        )

    def _expandable(self, s: _Shared, node: int) -> bool:
        return s.tree.status[node] != TERMINAL and s.tree.depth[node] < s.max_depth

    def select(self, problem_id: str, worker: str, n: int) -> list[Leaf] | None:
        """Up to ``n`` leaves for ``worker`` to expand, within the tree's ``parallel`` simulations
        in flight (all workers together: W workers search the tree one worker would, sharing
        its work; more in flight would make it wider); [] when that many are in flight now;
        None once every simulation is handed out."""
        s = self._trees[problem_id]
        if s.issued >= s.cfg.simulations:
            return None
        n = min(n, s.cfg.simulations - s.issued, s.cfg.parallel - len(s.tickets))
        if n <= 0:
            return []
        cfg, tree = s.cfg, s.tree
        widen = progressive_widening(
            cfg.expansions, cfg.widen_c, cfg.widen_alpha, lambda v: self._expandable(s, v)
        )
        to_expand, terminals, spent = select_leaves(
            tree, n, make_policy(cfg.policy, cfg.c), widen, lambda v: self._expandable(s, v)
        )
        s.issued += spent
        for path in terminals:
            tree.backup(path[-1], node_value(tree, path[-1], cfg), virtual_loss=1)
            s.terminal_backups += 1
        out = []
        for path in to_expand:
            leaf = path[-1]
            ticket = self._next_ticket
            self._next_ticket += 1
            s.tickets[ticket] = (worker, path)
            nonce = s.expanded.get(leaf, 0)
            s.expanded[leaf] = nonce + 1
            out.append(Leaf(ticket, leaf, nonce, self._prefix(s, leaf), tuple(tree.steps(leaf))))
        return out

    def _prefix(self, s: _Shared, node: int) -> bytes:
        cached = s.prefix.get(node)
        if cached is None:
            cached = s.prefix[node] = self._prefix(s, s.tree.parent[node]) + encode_ids(
                s.tree.token_ids[node]
            )
        return cached

    def commit(
        self,
        problem_id: str,
        expansions: list[tuple[int, list[tuple[Step, str | None]], list[tuple[float, ...] | None], int]],
    ) -> None:
        """Each ``(ticket, new steps with answers, each new chain's step scores, replica)``."""
        s = self._trees[problem_id]
        tree = s.tree
        for ticket, steps, scores, replica in expansions:
            _, path = s.tickets.pop(ticket)
            leaf = path[-1]
            if not steps:  # nothing came back (a refused request): the simulation ends here
                tree.apply_virtual_loss(path, -1)
                continue
            ids = tree.add_children(leaf, [st for st, _ in steps], replica)
            for child, (step, answer), chain in zip(ids, steps, scores, strict=True):
                if step.terminal:
                    tree.answer[child] = answer
                if chain is not None:
                    node, i = child, len(chain) - 1
                    while node != ROOT and tree.prm_score[node] != tree.prm_score[node]:  # NaN: unset
                        tree.prm_score[node] = chain[i]
                        node, i = tree.parent[node], i - 1
            tree.backup_expansion(leaf, ids, [node_value(tree, c, s.cfg) for c in ids])

    def abandon(self, problem_id: str, tickets: list[int] | None = None, worker: str | None = None) -> int:
        """Takes back the virtual loss of selections that will not be committed: these tickets,
        or every one of ``worker`` (a worker that died); returns how many."""
        s = self._trees[problem_id]
        gone = [t for t, (w, _) in s.tickets.items() if (tickets is not None and t in tickets) or w == worker]
        for t in gone:
            _, path = s.tickets.pop(t)
            s.tree.apply_virtual_loss(path, -1)
        return len(gone)

    def in_flight(self, problem_id: str) -> int:
        return len(self._trees[problem_id].tickets)

    def finish(self, problem_id: str) -> tuple[bytes, int | None, dict[str, Any]]:
        """The finished tree (msgpack), the chosen answer node, and counters; closes it."""
        s = self._trees.pop(problem_id)
        if s.tickets:
            raise RuntimeError(f"{problem_id}: {len(s.tickets)} simulations still in flight")
        stats = {"simulations": s.issued, "terminal_backups": s.terminal_backups}
        return s.tree.to_msgpack(), final_answer(s.tree, s.cfg), stats

    def tree(self, problem_id: str) -> bytes:
        """A snapshot of a tree being searched."""
        return self._trees[problem_id].tree.to_msgpack()

    def problem_ids(self) -> list[str]:
        return list(self._trees)
