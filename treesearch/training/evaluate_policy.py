"""Measures the policy alone through vLLM: greedy accuracy and pass@k on held-out puzzles.

    python -m treesearch.training.evaluate_policy --csv ../shared/data/game24/24.csv [--model DIR]

pass@k is the unbiased estimator of Chen et al. (2021), ``1 - C(n-c, k) / C(n, k)``, from
``n`` samples at temperature 1 per puzzle (``c`` correct); pass@1 at T=1 is the mean accuracy
of one sample. Puzzle sets: ToT's test (ranks 901-1000 of ``24.csv``) and the project's test
split. Prints a JSON object; ``--out`` also writes it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from math import comb
from pathlib import Path

from treesearch.models import embedded_model
from treesearch.tasks import game24 as g24
from treesearch.training import game24_data as data
from treesearch.training.sampling import sample_vllm, split_steps

KS = (1, 4, 16, 64)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of ``k`` draws (without replacement) of ``n`` is correct."""
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def solved(task: g24.Game24, numbers: Sequence[int], text: str) -> bool:
    """The task's own grading of a sampled chain."""
    return task.is_correct(task.problem(numbers), split_steps(text))


def evaluate(model: str, puzzle_sets: dict[str, list[tuple[int, ...]]], n: int, seed: int) -> dict:
    """``{set: {greedy, pass@k..., puzzles}}`` plus wall times; one engine per call."""
    everything = sorted({p for ps in puzzle_sets.values() for p in ps})
    prompts = [data.prompt_of(p) for p in everything]
    t0 = time.perf_counter()
    greedy = sample_vllm(model, prompts, 1, temperature=0.0, seed=seed)
    t1 = time.perf_counter()
    samples = sample_vllm(model, prompts, n, temperature=1.0, seed=seed)
    t2 = time.perf_counter()
    task = g24.Game24()
    by_puzzle = {
        p: (solved(task, p, g[0]), sum(solved(task, p, t) for t in s))
        for p, g, s in zip(everything, greedy, samples, strict=True)
    }
    out: dict = {"samples_per_puzzle": n, "greedy_s": t1 - t0, "sampling_s": t2 - t1}
    for name, ps in puzzle_sets.items():
        row = {"puzzles": len(ps), "greedy": sum(by_puzzle[p][0] for p in ps) / len(ps)}
        for k in (k for k in KS if k <= n):
            row[f"pass@{k}"] = sum(pass_at_k(n, by_puzzle[p][1], k) for p in ps) / len(ps)
        out[name] = row
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--csv", required=True, help="ToT's 24.csv")
    ap.add_argument("--model", default=str(embedded_model("policy")))
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)
    sets = {"tot_test": g24.read_tot_csv(args.csv), "project_test": list(g24.project_split()["test"])}
    result = {"model": args.model, **evaluate(args.model, sets, args.samples, args.seed)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
