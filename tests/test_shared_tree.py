"""Tree-parallel MCTS: several workers search one shared tree. The tree keeps
its invariants whatever the interleaving (property test), and W workers reach the accuracy of
one at the same simulations."""

from __future__ import annotations

import asyncio
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from treesearch.config import load_config
from treesearch.engine import Engine, EngineOptions, run_problems
from treesearch.feed import Lease, ProblemFeed
from treesearch.job import resolve, transports
from treesearch.results import evaluate
from treesearch.shared_tree import SharedTree
from treesearch.tree import NO_PARENT, TERMINAL, Tree


class LocalHandle:
    """One worker's handle on one shared tree, in this process; every call yields to the loop
    first (a random number of times), so the workers interleave as they would over Ray."""

    def __init__(self, shared: SharedTree, problem_id: str, worker: str, rng: random.Random):
        self.shared, self.problem_id, self.worker, self.rng = shared, problem_id, worker, rng

    async def _yield(self) -> None:
        for _ in range(self.rng.randrange(3)):
            await asyncio.sleep(0)

    async def select(self, n: int):
        await self._yield()
        return self.shared.select(self.problem_id, self.worker, n)

    async def commit(self, expansions) -> None:
        await self._yield()
        self.shared.commit(self.problem_id, expansions)


def _job(workers_sims: int, n: int, *extra: str):
    return resolve(
        load_config(
            None,
            [
                "run.in_process=true",
                "task.split=dev",
                f"run.limit={n}",
                "generator={backend: noisy_oracle, error_rate: 0.7, max_step_tokens: 40}",
                f"algorithm={{name: mcts, simulations: {workers_sims}, parallel: 4, expansions: 4}}",
                *extra,
            ],
        )
    )


def search_shared(job, workers: int, seed: int = 0) -> dict[str, tuple[Tree, int | None, dict]]:
    """Every problem searched by ``workers`` concurrent shares of its tree; the finished trees."""
    gen, scorer = transports(job)
    shared, rng = SharedTree(), random.Random(seed)
    leases = []
    for p in job.problems:
        shared.open(p.id, p.prompt, gen.tokenize(p.prompt), job.task.max_depth, job.algorithm_config)
        leases += [Lease(p, shared=LocalHandle(shared, p.id, f"w{w}", rng)) for w in range(workers)]
    parts: list = []
    engine = Engine(gen, scorer, EngineOptions(concurrency=len(leases)))
    asyncio.run(engine.run(ProblemFeed(leases, closed=True), job.spec(gen), lambda r, t: parts.append(r)))
    assert len(parts) == len(leases) and {r.status for r in parts} == {"part"}
    out = {}
    for p in job.problems:
        tree_bytes, node, stats = shared.finish(p.id)
        out[p.id] = (Tree.from_msgpack(tree_bytes), node, stats)
    return out


def check_invariants(tree: Tree, stats: dict, simulations: int) -> None:
    """The tree a set of interleaved simulations leaves behind is a valid, settled MCTS tree."""
    assert stats["simulations"] == simulations
    for n in range(len(tree)):
        assert tree.virtual_loss[n] == 0  # nothing left in flight
        assert tree.parent[n] == NO_PARENT or tree.parent[n] < n
        kids = tree.children[n]
        assert tree.visits[n] >= sum(tree.visits[c] for c in kids)
        if n and not kids and tree.status[n] != TERMINAL:
            assert tree.visits[n] == 1  # an unexpanded child was backed up once, when created
        if n and tree.status[n] != TERMINAL:
            assert tree.visits[n] == 1 + sum(tree.visits[c] for c in kids)
    # every child's backup reached the root once, and every terminal re-visit did
    assert tree.visits[0] == len(tree) - 1 + stats["terminal_backups"]
    assert abs(tree.value_sum[0] - sum(tree.value_sum[c] for c in tree.children[0])) < 1e-9 or stats[
        "terminal_backups"
    ]  # fmt: skip


@settings(max_examples=12, deadline=None)
@given(workers=st.integers(1, 4), seed=st.integers(0, 10_000), sims=st.integers(4, 40))
def test_shared_trees_keep_their_invariants_under_any_interleaving(workers, seed, sims):
    job = _job(sims, 3)
    for tree, node, stats in search_shared(job, workers, seed).values():
        check_invariants(tree, stats, sims)
        assert node is None or tree.status[node] == TERMINAL


def test_w_workers_on_one_tree_reach_the_accuracy_of_one_at_the_same_simulations():
    job = _job(24, 40, "prm.reachability=false")
    gen, scorer = transports(job)
    single, _, _ = asyncio.run(run_problems(job.problems, job.spec(gen), gen, scorer))
    accuracy = {1: sum(r.correct for r in single) / len(single)}
    by_id = {p.id: p for p in job.problems}
    for workers in (2, 4):
        trees = search_shared(job, workers)
        correct = [
            evaluate(by_id[pid], job.task, tree, node, None).correct for pid, (tree, node, _) in trees.items()
        ]
        accuracy[workers] = sum(correct) / len(correct)
    assert 0.3 < accuracy[1] < 1.0  # a search with something to find
    assert all(abs(a - accuracy[1]) <= 0.1 for a in accuracy.values()), accuracy
