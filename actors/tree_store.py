"""Shared tree store: one Ray actor holding the trees of many problems of a job.

Several search workers may run MCTS simulations on the same tree at once (tree-parallel MCTS,
Chaslot et al., 2008): each ``select`` adds virtual loss along the chosen path so concurrent
workers spread over branches, and ``backup`` removes it. The actor executes one method at a
time (a plain, non-async Ray actor), so every operation is atomic and a tree can never be
seen half-updated; selection policies are pure functions shipped with the call.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import ray

from treesearch.policies import SelectionPolicy, WideningRule, select_leaf
from treesearch.tree import Step, Tree


@ray.remote
class TreeStoreActor:
    def __init__(self) -> None:
        self.trees: dict[str, Tree] = {}

    def create(self, problem_id: str, prompt: str, prompt_token_ids: Sequence[int] = ()) -> None:
        if problem_id in self.trees:
            raise KeyError(f"tree {problem_id!r} exists already")
        self.trees[problem_id] = Tree(prompt, prompt_token_ids, problem_id)

    def put(self, tree_bytes: bytes) -> str:
        tree = Tree.from_msgpack(tree_bytes)
        self.trees[tree.problem_id] = tree
        return tree.problem_id

    def select(
        self,
        problem_id: str,
        policy: SelectionPolicy,
        virtual_loss: int = 1,
        widen: WideningRule | None = None,
    ) -> list[int]:
        """Path root..leaf chosen by ``policy``; virtual loss applied along it."""
        return select_leaf(self.trees[problem_id], policy, virtual_loss, widen)

    def add_children(
        self, problem_id: str, parent: int, steps: Sequence[Step], replica: int = -1
    ) -> list[int]:
        return self.trees[problem_id].add_children(parent, steps, replica)

    def set_scores(self, problem_id: str, nodes: Sequence[int], scores: Sequence[float]) -> None:
        tree = self.trees[problem_id]
        for n, s in zip(nodes, scores, strict=True):
            tree.prm_score[n] = s

    def backup(self, problem_id: str, node: int, value: float, virtual_loss: int = 0) -> None:
        self.trees[problem_id].backup(node, value, virtual_loss)

    def undo_virtual_loss(self, problem_id: str, path: Sequence[int], amount: int = 1) -> None:
        self.trees[problem_id].apply_virtual_loss(path, -amount)

    def steps(self, problem_id: str, node: int) -> list[str]:
        return self.trees[problem_id].steps(node)

    def get(self, problem_id: str) -> bytes:
        return self.trees[problem_id].to_msgpack()

    def problem_ids(self) -> list[str]:
        return list(self.trees)

    def snapshot(self, directory: str) -> int:
        """Writes every tree to ``directory/<id>.msgpack`` (atomically per file); returns the count."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        for pid, tree in self.trees.items():
            tmp = d / f".{pid}.msgpack.tmp"
            tmp.write_bytes(tree.to_msgpack())
            tmp.replace(d / f"{pid}.msgpack")
        return len(self.trees)
