"""Shared trees as a Ray actor: the trees several search workers search at once.

A plain (non-async) actor: Ray runs one method at a time, so every ``select`` and ``commit``
is atomic and no worker ever sees a tree half-updated. The logic is
:class:`treesearch.shared_tree.SharedTree`; this is its transport. :class:`SharedTreeClient` is
a worker's handle on one tree (:class:`treesearch.algorithms.mcts.SharedTreeHandle`).
"""

from __future__ import annotations

from typing import Any

import ray

from treesearch.shared_tree import Leaf, SharedTree


@ray.remote(num_cpus=0)
class SharedTreeActor:
    def __init__(self) -> None:
        self.store = SharedTree()

    def open(self, *args: Any, **kwargs: Any) -> None:
        """:meth:`treesearch.shared_tree.SharedTree.open`, in this actor."""
        self.store.open(*args, **kwargs)

    def select(self, problem_id: str, worker: str, n: int) -> list[Leaf] | None:
        return self.store.select(problem_id, worker, n)

    def commit(self, problem_id: str, expansions: list) -> None:
        self.store.commit(problem_id, expansions)

    def abandon(self, problem_id: str, worker: str) -> int:
        return self.store.abandon(problem_id, worker=worker)

    def in_flight(self, problem_id: str) -> int:
        return self.store.in_flight(problem_id)

    def finish(self, problem_id: str) -> tuple[bytes, int | None, dict[str, Any]]:
        return self.store.finish(problem_id)

    def tree(self, problem_id: str) -> bytes:
        return self.store.tree(problem_id)

    def problem_ids(self) -> list[str]:
        return self.store.problem_ids()


class SharedTreeClient:
    """One worker's handle on one shared tree in a :class:`SharedTreeActor`."""

    def __init__(self, actor: Any, problem_id: str, worker: str):
        self.actor, self.problem_id, self.worker = actor, problem_id, worker

    async def select(self, n: int) -> list[Leaf] | None:
        return await self.actor.select.remote(self.problem_id, self.worker, n)

    async def commit(self, expansions: list) -> None:
        await self.actor.commit.remote(self.problem_id, expansions)
