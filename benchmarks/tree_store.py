"""Tree store cost as trees grow: select + backup operations per second, msgpack save / load
time and bytes per node, at 10^4, 10^5 and 10^6 nodes (one process, pure Python).

Trees are grown like an MCTS with 4 samples per expansion (random step text of 24 characters,
token ids of 24 tokens). A "select + backup" is one PUCT descent from the root with virtual
loss plus the backup that removes it, on the finished tree.

    .venv/bin/python -m benchmarks.tree_store [--sizes 10000,100000,1000000] [--ops 2000] [--smoke]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from treesearch.policies import puct_value, select_leaf
from treesearch.tree import Step, Tree


def grow(n: int, branching: int = 4, seed: int = 0) -> Tree:
    """A tree of n nodes grown as MCTS grows one: PUCT descent to a leaf, expand it by
    ``branching`` children with random priors and values, back each value up."""
    rng = random.Random(seed)
    tree = Tree("4 5 6 10\n", tuple(range(9)), problem_id=f"bench-{n}")
    ids = tuple(range(24))
    while len(tree) < n:
        path = select_leaf(tree, puct_value, virtual_loss=0)
        k = min(branching, n - len(tree))
        steps = [Step(f"{rng.randint(10, 99)} + 7 = 33 (left: 1 2 3)", ids, -rng.random()) for _ in range(k)]
        for child in tree.add_children(path[-1], steps):
            value = rng.random() ** 2  # mostly poor steps, a few good ones
            tree.prm_score[child] = value
            tree.backup(child, value)
    return tree


def select_backup_rate(tree: Tree, ops: int, seed: int = 1) -> tuple[float, float]:
    """(operations per second, mean path length) of PUCT select-with-virtual-loss + backup."""
    rng = random.Random(seed)
    length = 0
    t0 = time.perf_counter()
    for _ in range(ops):
        path = select_leaf(tree, puct_value)
        length += len(path)
        tree.backup(path[-1], rng.random(), virtual_loss=1)
    return ops / (time.perf_counter() - t0), length / ops


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--ops", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script works")
    args = ap.parse_args()
    sizes = [1000, 3000] if args.smoke else [int(x) for x in args.sizes.split(",")]
    ops = 200 if args.smoke else args.ops
    repeats = 1 if args.smoke else args.repeats
    print(
        f"{'nodes':>9} {'grow s':>8} {'path len':>9} {'sel+backup /s':>14} "
        f"{'save ms':>9} {'load ms':>9} {'bytes/node':>11}"
    )
    rows = []
    for n in sizes:
        t0 = time.perf_counter()
        tree = grow(n)
        grow_s = time.perf_counter() - t0
        rate, path_len = select_backup_rate(tree, ops)
        data = tree.to_msgpack()
        save = timed(tree.to_msgpack, repeats)
        load = timed(lambda data=data: Tree.from_msgpack(data), repeats)
        rows.append((n, rate, save, load, len(data) / n))
        print(
            f"{n:>9} {grow_s:>8.2f} {path_len:>9.1f} {rate:>14,.0f} {save * 1e3:>9.1f} {load * 1e3:>9.1f} "
            f"{len(data) / n:>11.1f}"
        )
    (n0, r0, s0, l0, _), (n1, r1, s1, l1, _) = rows[0], rows[-1]
    print(
        f"ratio: x{n1 / n0:.0f} nodes -> select+backup rate x{r1 / r0:.2f}, "
        f"save time x{s1 / s0:.1f}, load time x{l1 / l0:.1f}"
    )


if __name__ == "__main__":
    main()
