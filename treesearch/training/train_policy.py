"""Trains the embedded Game-of-24 policy on every solution path of the training puzzles.

    python -m treesearch.training.train_policy --csv ../shared/data/game24/24.csv --out DIR

A Llama (1.28M parameters by default) over the task's character tokenizer, next-token loss
on the steps (not the prompt) and the final end-of-sequence. Reproducible from ``--seed``.
"""

from __future__ import annotations

import argparse
import random
import sys

from treesearch.tasks.game24 import state_of
from treesearch.training import game24_data as data
from treesearch.training.tiny import build_char_tokenizer
from treesearch.training.train import (
    IGNORE,
    ModelShape,
    TrainConfig,
    describe,
    make_llama,
    next_token_loss,
    pad_batch,
    save,
    train,
)


def examples(tokenizer, puzzles) -> list[tuple[list[int], list[int]]]:
    """``(ids, targets)`` per solution path: targets are the next token on the steps, else IGNORE."""
    rows = []
    for p in puzzles:
        n_prompt = len(tokenizer.encode(data.prompt_of(p)))
        for steps in data.solution_paths(state_of(p)):
            ids = [*tokenizer.encode(data.policy_text(p, steps)), tokenizer.eos_token_id]
            tgt = [IGNORE] * (n_prompt - 1) + ids[n_prompt:] + [IGNORE]
            rows.append((ids, tgt))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--csv", required=True, help="ToT's 24.csv (its ranks 901-1000 are held out)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=TrainConfig.steps)
    ap.add_argument("--batch", type=int, default=TrainConfig.batch)
    ap.add_argument("--lr", type=float, default=TrainConfig.lr)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)

    tok = build_char_tokenizer()
    puzzles = data.training_puzzles(args.csv)
    rows = examples(tok, puzzles)
    print(f"{len(puzzles)} training puzzles, {len(rows)} solution paths", file=sys.stderr)
    shape = ModelShape()
    cfg = TrainConfig(steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed, device=args.device)
    model = make_llama(tok, shape, args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"policy: {n_params / 1e6:.2f}M parameters", file=sys.stderr)

    def batch(rng: random.Random):
        return [pad_batch(rng.sample(rows, min(cfg.batch, len(rows))), tok.pad_token_id)]

    stats = train(model, batch, next_token_loss, cfg, log=lambda s: print(s, file=sys.stderr))
    card = {
        "command": "python -m treesearch.training.train_policy " + " ".join(argv or sys.argv[1:]),
        "parameters": n_params,
        "training_puzzles": len(puzzles),
        "examples": len(rows),
        **describe(shape, cfg),
        **stats,
    }
    save(model, tok, args.out, card)
    print(
        f"saved {args.out}: final loss {stats['final_loss']:.4f}, {stats['minutes']:.1f} min", file=sys.stderr
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
