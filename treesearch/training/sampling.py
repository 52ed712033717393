"""Batched sampling of Game-of-24 chains from a causal LM with plain torch / transformers.

Used to draw the policy's own samples for PRM training (on whatever device trains) and as a
reference in tests; searches sample through the generator actors (vLLM) instead. Prompts are
grouped by token length so a batch needs no padding.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch

MAX_NEW_TOKENS = 120  # three steps of the longest form fit in ~100 characters


def split_steps(text: str, max_steps: int = 4) -> list[str]:
    """A continuation's steps: its non-empty lines, up to ``max_steps``."""
    return [s.strip() for s in text.split("\n") if s.strip()][:max_steps]


@torch.no_grad()
def sample(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    n: int,
    temperature: float = 1.0,
    max_new_tokens: int = MAX_NEW_TOKENS,
    batch: int = 4096,
    seed: int = 0,
) -> list[list[str]]:
    """``n`` continuations of each prompt (``temperature == 0``: greedy, ``n`` copies).

    Returns ``[len(prompts)][n]`` decoded texts, cut at end-of-sequence, special tokens dropped.
    """
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    out: list[list[str]] = [[] for _ in prompts]
    groups: dict[int, list[int]] = defaultdict(list)
    encoded = [tokenizer.encode(p) for p in prompts]
    for i, ids in enumerate(encoded):
        groups[len(ids)].append(i)
    copies = 1 if temperature == 0 else n
    for _, idx in sorted(groups.items()):
        rows = [i for i in idx for _ in range(copies)]
        for start in range(0, len(rows), batch):
            chunk = rows[start : start + batch]
            ids = torch.tensor([encoded[i] for i in chunk], device=device)
            gen = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                top_k=0 if temperature > 0 else None,
                top_p=None,
                max_new_tokens=max_new_tokens,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
            texts = tokenizer.batch_decode(gen[:, ids.shape[1] :], skip_special_tokens=True)
            for i, t in zip(chunk, texts, strict=True):
                out[i].extend([t] * (n if temperature == 0 else 1))
    return out


def sample_vllm(
    model_dir: str,
    prompts: Sequence[str],
    n: int | Sequence[int],
    temperature: float = 1.0,
    max_new_tokens: int = MAX_NEW_TOKENS,
    seed: int = 0,
) -> list[list[str]]:
    """As :func:`sample` (``n`` may differ per prompt), through an offline vLLM engine (fast
    on CPU; the caller's ``__main__`` must be guarded: vLLM spawns its engine process)."""
    import gc

    from vllm import LLM, SamplingParams

    llm = LLM(
        model=model_dir,
        dtype="float32",
        seed=seed,
        gpu_memory_utilization=0.2,  # on CPU: this fraction of RAM is the KV cache
        enforce_eager=True,
        enable_prefix_caching=True,
    )
    try:
        counts = [n] * len(prompts) if isinstance(n, int) else list(n)
        params = [
            SamplingParams(
                n=1 if temperature == 0 else k,
                temperature=temperature,
                max_tokens=max_new_tokens,
                skip_special_tokens=True,
            )
            for k in counts
        ]
        outs = llm.generate(list(prompts), params, use_tqdm=False)
        texts = [[o.text for o in out.outputs] for out in outs]
        return [t * k if temperature == 0 else t for t, k in zip(texts, counts, strict=True)]
    finally:
        del llm
        gc.collect()
