"""PRM training step: one batch padded to its longest row vs length-bucketed micro-batches.

The embedded PRM's step is compute-bound on CPU, so padding is wasted work; this times both on
the same rows (the PRM's synthetic training chains, Math-Shepherd format, the shipped PRM's
shape), alternating the two so drift hits both alike. Median of --steps timed steps each.

    .venv/bin/python -m benchmarks.train_step [--batch 128] [--buckets 8] [--steps 20]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from treesearch.tasks import game24 as g24
from treesearch.training import game24_data as data
from treesearch.training.tiny import build_char_tokenizer
from treesearch.training.train import (
    IGNORE,
    ModelShape,
    accumulate_gradients,
    length_buckets,
    make_llama,
    pad_batch,
)
from treesearch.training.train_prm import corrupt_chain, encode, valid_chain


def step_seconds(model, opt, micro, loss_fn) -> float:
    """One optimiser step through the training loop's own gradient accumulation."""
    start = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    accumulate_gradients(model, micro, loss_fn, torch.device("cpu"))
    opt.step()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--buckets", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per variant (after 3 warm-up)")
    ap.add_argument("--smoke", action="store_true", help="a tiny model and 2 steps (a check, not a figure)")
    args = ap.parse_args(argv)
    shape = ModelShape(hidden=32, layers=2, heads=1, intermediate=64) if args.smoke else ModelShape()
    steps = 2 if args.smoke else args.steps

    tok = build_char_tokenizer(added_tokens=(data.TAG,))
    rng = random.Random(0)
    puzzles = g24.solvable_puzzles()
    chains = [corrupt_chain(rng.choice(puzzles), rng) for _ in range(2000)]
    chains += [valid_chain(rng.choice(puzzles), rng) for _ in range(2000)]
    rows = encode(tok, [c for c in chains if c])
    model = make_llama(tok, shape, seed=0).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    good, bad = tok.convert_tokens_to_ids(data.GOOD), tok.convert_tokens_to_ids(data.BAD)

    def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        sel = targets != IGNORE
        return torch.nn.functional.cross_entropy(logits[sel][:, [good, bad]], targets[sel])

    times: dict[str, list[float]] = {"padded": [], "bucketed": []}
    padded_tokens = bucketed_tokens = 0
    for i in range(steps + 3):
        batch = [rng.choice(rows) for _ in range(args.batch)]
        one = [pad_batch(batch, tok.pad_token_id)]
        micro = length_buckets(batch, tok.pad_token_id, args.buckets)
        for name, b in (("padded", one), ("bucketed", micro)):
            t = step_seconds(model, opt, b, loss_fn)
            if i >= 3:
                times[name].append(t)
        padded_tokens += one[0][0].numel()
        bucketed_tokens += sum(ids.numel() for ids, _, _ in micro)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"threads {torch.get_num_threads()}, batch {args.batch}, {steps} timed steps each")
    print(f"padded:   {med['padded']:.3f} s/step (median), tokens incl. padding {padded_tokens:,}")
    print(
        f"bucketed: {med['bucketed']:.3f} s/step (median), {args.buckets} micro-batches, "
        f"tokens incl. padding {bucketed_tokens:,} ({bucketed_tokens / padded_tokens:.2f}x)"
    )
    print(f"ratio: bucketed is {med['padded'] / med['bucketed']:.2f}x faster per step")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
