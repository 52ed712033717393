"""The training loop shared by the embedded policy and PRM (torch; imported only to train).

A batch is ``(input_ids, attention_mask, targets)``, each ``[batch, length]`` int64; ``targets``
is ``-100`` where no loss is taken. One optimiser step takes a list of such micro-batches (their
gradients add up, each weighted by its share of the step's targets): rows sorted by length and
padded per micro-batch cost less compute than one batch padded to its longest row
(``benchmarks/train_step.py``). The
loss is passed in: next-token cross-entropy for the policy, a two-way (good / bad) cross-entropy
at the step tags for the PRM.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
IGNORE = -100


@dataclass
class ModelShape:
    """A Llama's size. ``hidden / heads`` must be >= 32 (vLLM's CPU attention)."""

    hidden: int = 128
    layers: int = 6
    heads: int = 4
    intermediate: int = 384
    max_positions: int = 256


@dataclass
class TrainConfig:
    steps: int = 900  # optimiser steps
    batch: int = 128  # sequences per step
    lr: float = 3e-3  # peak AdamW learning rate (cosine decay to 10% after warmup)
    warmup: int = 100  # linear warmup steps
    weight_decay: float = 0.01
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    log_every: int = 100


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def make_llama(tokenizer: Any, shape: ModelShape, seed: int) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        max_position_embeddings=shape.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def pad_batch(rows: Sequence[tuple[list[int], list[int]]], pad_id: int) -> Batch:
    """Right-pads ``(ids, targets)`` rows into one batch."""
    n = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    tgt = torch.full((len(rows), n), IGNORE, dtype=torch.long)
    for i, (x, t) in enumerate(rows):
        ids[i, : len(x)] = torch.tensor(x)
        mask[i, : len(x)] = 1
        tgt[i, : len(t)] = torch.tensor(t)
    return ids, mask, tgt


def length_buckets(rows: Sequence[tuple[list[int], list[int]]], pad_id: int, buckets: int) -> list[Batch]:
    """``rows`` sorted by length and cut into ``buckets`` micro-batches, each padded on its own
    (on CPU the step is compute-bound, so padding to the batch's longest row is wasted work)."""
    rows = sorted(rows, key=lambda r: len(r[0]))
    cuts = [round(i * len(rows) / buckets) for i in range(buckets + 1)]
    return [pad_batch(rows[a:b], pad_id) for a, b in itertools.pairwise(cuts) if b > a]


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``targets[b, t]`` is the token expected after position ``t`` (already shifted)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE)


def accumulate_gradients(
    model: Any,
    micro: Sequence[Batch],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    device: torch.device,
) -> torch.Tensor:
    """Forward and backward over one step's micro-batches, adding into ``.grad``.

    ``loss_fn`` is a mean over a micro-batch's targets, so each is weighted by its share of the
    step's targets (one micro-batch: weight exactly 1). Returns the step's loss (detached)."""
    counts = [int((tgt != IGNORE).sum()) for _, _, tgt in micro]
    total = sum(counts)
    step_loss = torch.zeros((), device=device)
    for (ids, _, tgt), n in zip(micro, counts, strict=True):
        ids, tgt = ids.to(device, non_blocking=True), tgt.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            # Right padding only: causal attention never looks past a row's end, so no mask
            # is needed (and the unmasked path is the fast one on CPU).
            logits = model(input_ids=ids).logits
        loss = loss_fn(logits, tgt) * (n / total)
        loss.backward()
        step_loss += loss.detach()
    return step_loss


def train(
    model: Any,
    sample_batch: Callable[[random.Random], Sequence[Batch]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    cfg: TrainConfig,
    log: Callable[[str], None] = print,
) -> dict[str, float]:
    """Trains in place; returns ``{final_loss, minutes, steps}`` (final loss: mean of the last 100).

    ``sample_batch`` returns one step's micro-batches (see :func:`accumulate_gradients`).
    """
    device = pick_device(cfg.device)
    model.to(device).train()
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))

    start, recent = time.perf_counter(), []
    for step in range(cfg.steps):
        micro = sample_batch(rng)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        step_loss = accumulate_gradients(model, micro, loss_fn, device)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        recent = [*recent[-99:], step_loss.item()] if step % 10 == 0 or step >= cfg.steps - 100 else recent
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            mins = (time.perf_counter() - start) / 60
            mean = sum(recent[-10:]) / len(recent[-10:])
            log(f"step {step + 1}/{cfg.steps}  loss {mean:.4f}  {mins:.1f} min")
    model.eval()
    return {
        "final_loss": sum(recent) / max(1, len(recent)),
        "minutes": (time.perf_counter() - start) / 60,
        "steps": cfg.steps,
    }


def save(model: Any, tokenizer: Any, out: str | Path, card: dict[str, Any]) -> Path:
    """Saves an HF model dir (float32 safetensors) plus ``training.json`` (the run's facts)."""
    out = Path(out)
    model.to("cpu", dtype=torch.float32).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "training.json").write_text(json.dumps(card, indent=2, default=str) + "\n")
    return out


def describe(shape: ModelShape, cfg: TrainConfig) -> dict[str, Any]:
    return {"shape": asdict(shape), "train": asdict(cfg)}
