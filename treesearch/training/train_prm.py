"""Trains the embedded Game-of-24 PRM (Math-Shepherd format) mainly on the policy's own samples.

    python -m treesearch.training.train_prm --csv ../shared/data/game24/24.csv \\
        --policy DIR --out DIR

Input ``"{puzzle} {step 1} ки\\n{step 2} ки..."``; the score of step i is
``softmax(logits[tag_i, [+, -]])[0]``. Labels come from the solver (good iff every step so far
is valid and 24 is still reachable). The mixture per batch:

- ``policy``: the policy's own chains, sampled at temperature 1 from the training puzzles
  (unsolvable multisets included) and from random valid prefixes of depth 1 and 2;
- ``corrupt``: hard negatives aimed at what the policy gets wrong (made-up arithmetic, a wrong
  ``left`` list, an unavailable operand, a false ``= 24``) after a random valid prefix;
- ``valid``: random valid chains, half of them along moves that keep 24 reachable.

At the end it reports step accuracy and recall on good / bad steps on held-out policy samples
(the project's test split and ToT's ranks 901-1000, never trained on).
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from treesearch.tasks import game24 as g24
from treesearch.tasks.game24 import state_of
from treesearch.training import game24_data as data
from treesearch.training.sampling import sample, sample_vllm, split_steps
from treesearch.training.tiny import build_char_tokenizer
from treesearch.training.train import (
    IGNORE,
    ModelShape,
    TrainConfig,
    describe,
    length_buckets,
    make_llama,
    pick_device,
    save,
    train,
)

Chain = tuple[tuple[int, ...], tuple[str, ...]]  # (puzzle numbers, steps)
SCRATCH_SHAPE = ModelShape(hidden=128, layers=8, heads=4, intermediate=384)  # 1.7M, --init scratch


def init_from_policy(policy_dir: str, tok: Any) -> tuple[Any, ModelShape]:
    """The policy's weights with one new embedding row for the step tag (Math-Shepherd PRMs
    are fine-tuned language models: the policy already reads the format and the arithmetic)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoTokenizer.from_pretrained(policy_dir).get_vocab()
    if any(tok.convert_tokens_to_ids(t) != i for t, i in base.items()):
        raise ValueError(f"{policy_dir}: its vocabulary is not a prefix of the PRM's")
    model = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32)
    model.resize_token_embeddings(len(tok), mean_resizing=True)
    c = model.config
    shape = ModelShape(
        hidden=c.hidden_size,
        layers=c.num_hidden_layers,
        heads=c.num_attention_heads,
        intermediate=c.intermediate_size,
        max_positions=c.max_position_embeddings,
    )
    return model, shape


# ----------------------------------------------------------------------------- data
Sampler = Callable[[Sequence[str], Sequence[int], int], list[list[str]]]  # prompts, counts, seed


def make_sampler(policy_dir: str, kind: str, device: Any) -> Sampler:
    """``vllm`` (an offline engine; fast on CPU) or ``torch`` (HF generate on ``device``)."""
    if kind == "vllm":
        return lambda prompts, counts, seed: sample_vllm(policy_dir, prompts, counts, seed=seed)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(policy_dir)
    model = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32).to(device).eval()

    def draw(prompts: Sequence[str], counts: Sequence[int], seed: int) -> list[list[str]]:
        out: list[list[str]] = [[] for _ in prompts]
        for k in sorted(set(counts)):
            idx = [i for i, c in enumerate(counts) if c == k]
            for i, texts in zip(
                idx, sample(model, tok, [prompts[i] for i in idx], k, seed=seed + k), strict=True
            ):
                out[i] = texts
        return out

    return draw


def policy_starts(
    puzzles: Sequence[tuple[int, ...]], n_root: int, n_prefix: int, per_prefix: int, seed: int
) -> list[tuple[Chain, int]]:
    """Where the policy's training samples start, with a count each: ``n_root`` from each
    puzzle, ``per_prefix`` from ``n_prefix`` random valid prefixes (depth 1 or 2) of each."""
    rng = random.Random(seed)
    starts: list[tuple[Chain, int]] = [((p, ()), n_root) for p in puzzles]
    for p in puzzles:
        for _ in range(n_prefix):
            pre = data.random_valid_prefix(p, rng.choice((1, 2)), rng)
            if pre is not None:
                starts.append(((p, tuple(pre)), per_prefix))
    return starts


def held_out_starts(csv: str, n: int) -> list[tuple[Chain, int]]:
    """``n`` samples from each held-out puzzle (project test split + ToT's 901-1000)."""
    held = sorted({*g24.project_split()["test"], *g24.read_tot_csv(csv)})
    return [((p, ()), n) for p in held]


def draw_chains(draw: Sampler, starts: Sequence[tuple[Chain, int]], seed: int) -> list[list[Chain]]:
    """The policy's continuations of each start, as whole chains (start's steps + sampled ones,
    at most three in all plus one overrun, so a chain that runs on is labelled bad)."""
    prompts = [data.policy_text(p, pre) for (p, pre), _ in starts]
    texts = draw(prompts, [k for _, k in starts], seed)
    out: list[list[Chain]] = []
    for ((p, pre), _), outs in zip(starts, texts, strict=True):
        chains = [(p, (*pre, *split_steps(t, 3 - len(pre) + 1))) for t in outs]
        out.append([c for c in chains if len(c[1]) > len(pre)])
    return out


def corrupt_chain(p: tuple[int, ...], rng: random.Random) -> Chain | None:
    pre = data.random_valid_prefix(p, rng.choice((0, 1, 1, 2, 2)), rng)
    if pre is None:
        return None
    state = data.state_after(p, pre)
    moves = data.policy_moves(state)
    if not moves:
        return None
    return p, (*pre, data.corrupt(state, rng.choice(moves), rng).text)


def valid_chain(p: tuple[int, ...], rng: random.Random) -> Chain | None:
    state, steps = state_of(p), []
    for _ in range(rng.choice((1, 2, 3, 3))):
        good = [m for m in g24.good_moves(state) if m.result >= 0]
        moves = good if good and rng.random() < 0.5 else data.policy_moves(state)
        if not moves:
            break
        m = rng.choice(moves)
        steps.append(m.text())
        state = m.left
    return (p, tuple(steps)) if steps else None


def encode(tok: Any, chains: Sequence[Chain]) -> list[tuple[list[int], list[int]]]:
    """``(ids, targets)``: target 0 (good) / 1 (bad) at each step tag, IGNORE elsewhere."""
    tag = tok.convert_tokens_to_ids(data.TAG)
    texts = [data.prm_text(p, steps) for p, steps in chains]
    rows = []
    for (p, steps), ids in zip(chains, tok(texts)["input_ids"], strict=True):
        labels = iter(data.step_labels(p, steps))
        rows.append((ids, [(0 if next(labels) else 1) if t == tag else IGNORE for t in ids]))
    return rows


# ----------------------------------------------------------------------------- scoring
@torch.no_grad()
def score_chains(model: Any, tok: Any, chains: Sequence[Chain], batch: int = 512) -> list[list[float]]:
    """P(good) per step, read at the step tags (as the PRM actor reads it)."""
    device = next(model.parameters()).device
    good, bad = tok.convert_tokens_to_ids(data.GOOD), tok.convert_tokens_to_ids(data.BAD)
    tag = tok.convert_tokens_to_ids(data.TAG)
    out: list[list[float]] = []
    for start in range(0, len(chains), batch):
        texts = [data.prm_text(p, s) for p, s in chains[start : start + batch]]
        enc = tok(texts, return_tensors="pt", padding=True, padding_side="right")
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        probs = torch.softmax(logits[..., [good, bad]], dim=-1)[..., 0]
        for row_ids, row_p in zip(ids.tolist(), probs.tolist(), strict=True):
            out.append([pr for t, pr in zip(row_ids, row_p, strict=True) if t == tag])
    return out


def step_metrics(
    chains: Sequence[Chain], scores: Sequence[Sequence[float]], first_error_only: bool = False
) -> dict[str, float]:
    """Accuracy at threshold 0.5 and recall on good / bad steps. ``first_error_only`` keeps the
    steps up to and including a chain's first bad one (later steps are trivially bad)."""
    hits = {True: [0, 0], False: [0, 0]}  # label -> [correct, total]
    for (p, steps), sc in zip(chains, scores, strict=True):
        for label, s in zip(data.step_labels(p, steps), sc, strict=True):
            hits[label][0] += (s > 0.5) == label
            hits[label][1] += 1
            if first_error_only and not label:
                break
    n = hits[True][1] + hits[False][1]
    return {
        "steps": n,
        "accuracy": (hits[True][0] + hits[False][0]) / max(1, n),
        "recall_good": hits[True][0] / max(1, hits[True][1]),
        "recall_bad": hits[False][0] / max(1, hits[False][1]),
        "good_fraction": hits[True][1] / max(1, n),
    }


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--csv", required=True, help="ToT's 24.csv (its ranks 901-1000 are held out)")
    ap.add_argument("--policy", required=True, help="the trained policy's model dir")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=1300)
    ap.add_argument("--batch", type=int, default=104)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument(
        "--init", default="policy", choices=("policy", "scratch"), help="start from the policy's weights"
    )
    ap.add_argument("--samples", type=int, default=10, help="policy samples per training puzzle (root)")
    ap.add_argument("--prefixes", type=int, default=4, help="random valid prefixes per puzzle")
    ap.add_argument("--per-prefix", type=int, default=2, help="policy samples per prefix")
    ap.add_argument(
        "--policy-share",
        type=float,
        default=0.8,
        help="share of each batch; corrupt and valid chains split the rest",
    )
    ap.add_argument("--pool", type=int, default=100_000, help="corrupt and valid chains each")
    ap.add_argument("--eval-samples", type=int, default=16, help="held-out policy samples per test puzzle")
    ap.add_argument("--buckets", type=int, default=8, help="micro-batches per step, rows sorted by length")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--sampler",
        default="auto",
        choices=("auto", "vllm", "torch"),
        help="how policy samples are drawn (auto: vllm on CPU, torch on GPU)",
    )
    args = ap.parse_args(argv)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731

    device = pick_device(args.device)
    kind = args.sampler if args.sampler != "auto" else ("vllm" if device.type == "cpu" else "torch")
    draw = make_sampler(args.policy, kind, device)
    tok = build_char_tokenizer(added_tokens=(data.TAG,))
    puzzles = data.training_puzzles(args.csv, solvable_only=False)
    rng = random.Random(args.seed)

    # One engine draws the training samples and the held-out ones (an engine start is ~40 s).
    train_starts = policy_starts(puzzles, args.samples, args.prefixes, args.per_prefix, args.seed)
    drawn = draw_chains(draw, [*train_starts, *held_out_starts(args.csv, args.eval_samples)], args.seed)
    pol = [c for chains in drawn[: len(train_starts)] for c in chains]
    held = [c for chains in drawn[len(train_starts) :] for c in chains]
    solvable = data.training_puzzles(args.csv)
    corrupt = [c for c in (corrupt_chain(rng.choice(solvable), rng) for _ in range(args.pool)) if c]
    valid = [c for c in (valid_chain(rng.choice(puzzles), rng) for _ in range(args.pool)) if c]
    pools = {
        name: encode(tok, chains)
        for name, chains in (("policy", pol), ("corrupt", corrupt), ("valid", valid))
    }
    for name, rows in pools.items():
        targets = [t for _, tg in rows for t in tg if t != IGNORE]
        log(f"{name}: {len(rows)} chains, {len(targets)} steps, {1 - sum(targets) / len(targets):.2f} good")
    all_targets = [t for rows in pools.values() for _, tg in rows for t in tg if t != IGNORE]
    p_good = 1 - sum(all_targets) / len(all_targets)
    weight = torch.tensor([0.5 / p_good, 0.5 / (1 - p_good)], device=device)  # balance good / bad
    rest = round((1 - args.policy_share) / 2, 6)
    mix = (("policy", args.policy_share), ("corrupt", rest), ("valid", rest))

    def batch(r: random.Random):
        rows = [r.choice(pools[name]) for name, share in mix for _ in range(round(args.batch * share))]
        return length_buckets(rows, tok.pad_token_id, args.buckets)

    good, bad = tok.convert_tokens_to_ids(data.GOOD), tok.convert_tokens_to_ids(data.BAD)

    def tag_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        sel = targets != IGNORE
        return F.cross_entropy(logits[sel][:, [good, bad]].float(), targets[sel], weight=weight)

    if args.init == "policy":
        torch.manual_seed(args.seed)  # the new rows are drawn at random
        model, shape = init_from_policy(args.policy, tok)
    else:
        model, shape = make_llama(tok, SCRATCH_SHAPE, args.seed), SCRATCH_SHAPE
    n_params = sum(p.numel() for p in model.parameters())
    log(f"prm: {n_params / 1e6:.2f}M parameters, {len(puzzles)} training multisets")
    cfg = TrainConfig(
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        warmup=50,
        log_every=100,
    )
    stats = train(model, batch, tag_loss, cfg, log=log)

    model.to(device)
    scores = score_chains(model, tok, held)
    metrics = {
        "all_steps": step_metrics(held, scores),
        "up_to_first_error": step_metrics(held, scores, first_error_only=True),
    }
    log(f"held-out policy samples: {metrics}")
    card = {
        "command": "python -m treesearch.training.train_prm " + " ".join(argv or sys.argv[1:]),
        "parameters": n_params,
        "training_multisets": len(puzzles),
        "pools": {k: len(v) for k, v in pools.items()},
        "mix": dict(mix),
        "held_out": metrics,
        "init": args.init,
        **describe(shape, cfg),
        **stats,
    }
    save(model, tok, args.out, card)
    log(f"saved {args.out}: final loss {stats['final_loss']:.4f}, {stats['minutes']:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
