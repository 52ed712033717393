"""The embedded models' training loop: length-bucketed micro-batches are the same step."""

from __future__ import annotations

import random

import torch

from treesearch.training import game24_data as data
from treesearch.training.tiny import build_char_tokenizer
from treesearch.training.train import (
    IGNORE,
    ModelShape,
    TrainConfig,
    length_buckets,
    make_llama,
    next_token_loss,
    pad_batch,
    train,
)
from treesearch.training.train_policy import examples

SMALL = ModelShape(hidden=32, layers=2, heads=1, intermediate=64)


def _rows(n: int) -> list[tuple[list[int], list[int]]]:
    tok = build_char_tokenizer()
    rows = examples(tok, [(4, 5, 6, 10), (1, 2, 3, 4), (2, 3, 4, 9)])
    return random.Random(0).sample(rows, n)


def test_length_buckets_keep_every_row_once_and_pad_less():
    tok = build_char_tokenizer()
    rows = _rows(40)
    micro = length_buckets(rows, tok.pad_token_id, 4)
    assert len(micro) == 4 and sum(ids.shape[0] for ids, _, _ in micro) == 40
    got = sorted(tuple(ids[m.bool()].tolist()) for ids, m, _ in micro for ids, m in zip(ids, m, strict=True))
    assert got == sorted(tuple(ids) for ids, _ in rows)
    # Each micro-batch holds its own targets, padded with IGNORE.
    assert sum(int((t != IGNORE).sum()) for _, _, t in micro) == sum(
        sum(x != IGNORE for x in t) for _, t in rows
    )
    one = pad_batch(rows, tok.pad_token_id)
    assert sum(ids.numel() for ids, _, _ in micro) < one[0].numel()
    assert len(length_buckets(rows[:3], tok.pad_token_id, 8)) == 3  # never an empty one


def _grads_after_one_step(batches) -> list[torch.Tensor]:
    tok = build_char_tokenizer()
    model = make_llama(tok, SMALL, seed=0)
    # lr 0: the step changes no weight, and the gradients it leaves in .grad are its own.
    cfg = TrainConfig(steps=1, lr=0.0, warmup=1, device="cpu", log_every=1)
    train(model, lambda _: batches, next_token_loss, cfg, log=lambda _: None)
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_a_bucketed_step_has_the_gradient_of_the_whole_batch():
    tok = build_char_tokenizer()
    rows = _rows(24)
    whole = _grads_after_one_step([pad_batch(rows, tok.pad_token_id)])
    bucketed = _grads_after_one_step(length_buckets(rows, tok.pad_token_id, 3))
    assert len(whole) == len(bucketed) > 0
    for a, b in zip(whole, bucketed, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_prm_rows_carry_one_target_per_step_tag():
    from treesearch.training.train_prm import encode

    tok = build_char_tokenizer(added_tokens=(data.TAG,))
    chain = ((4, 5, 6, 10), ("10 - 4 = 6 (left: 5 6 6)", "6 - 5 = 1 (left: 1 6)"))
    ((ids, tgt),) = encode(tok, [chain])
    tag = tok.convert_tokens_to_ids(data.TAG)
    # 5 6 6 still makes 24 (6 * 5 - 6); 1 6 does not: good (0) then bad (1).
    assert [t for i, t in zip(ids, tgt, strict=True) if i == tag] == [0, 1]
    assert all(t == IGNORE for i, t in zip(ids, tgt, strict=True) if i != tag)


def test_policy_samples_continue_their_start_and_stop_one_step_past_three():
    from treesearch.training.train_prm import draw_chains, policy_starts

    puzzles = [(4, 5, 6, 10), (1, 1, 1, 1)]
    starts = policy_starts(puzzles, n_root=3, n_prefix=2, per_prefix=1, seed=0)
    assert [k for (_, pre), k in starts if not pre] == [3, 3]
    assert all(k == 1 and 1 <= len(pre) <= 2 for (_, pre), k in starts if pre)
    prompts_seen: list[str] = []

    def fake_draw(prompts, counts, seed):
        prompts_seen.extend(prompts)
        return [["a\nb\nc\nd\ne\n", "\n\n"][: min(k, 2)] + ["x\n"] * max(0, k - 2) for k in counts]

    drawn = draw_chains(fake_draw, starts, seed=0)
    assert prompts_seen == [data.policy_text(p, pre) for (p, pre), _ in starts]
    for ((p, pre), _), chains in zip(starts, drawn, strict=True):
        for q, steps in chains:
            assert q == p and steps[: len(pre)] == pre and len(steps) > len(pre)
            assert len(steps) <= 4  # three steps plus one overrun, labelled bad
    # An empty continuation adds no chain.
    assert all(len(chains) == k - 1 for ((_, pre), k), chains in zip(starts, drawn, strict=True) if not pre)
