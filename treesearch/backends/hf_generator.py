"""``generator: {backend: hf}``: transformers ``generate``, the batch's prompts padded together."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from typing import Any, Literal

from treesearch.backends.hf import PromptTokenizer, load_tokenizer, torch_device
from treesearch.backends.registry import Backend, WorkerEnv, register
from treesearch.protocol import ExpandRequest, ExpandResult, GeneratedStep, count_ids, decode_ids, encode_ids
from treesearch.schema import Flag, Float, Text, section
from treesearch.sections import GeneratorConfig


@section
class HFGeneratorConfig(GeneratorConfig):
    """transformers ``generate`` on CPU or GPU (no prefix cache)."""

    model: Text | None = None  # HF model dir; game24: none = the embedded policy
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    temperature: Float(gt=0, le=10) = 1.0  # sampling (generate's do_sample needs > 0)
    top_p: Float(gt=0, le=1) = 1.0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    add_special_tokens: Flag = True  # the prompt's tokenization adds BOS etc.

    embedded = "policy"


class HFGenerator:
    """The worker: the batch's prompts left-padded together, k samples each."""

    def __init__(self, cfg: HFGeneratorConfig, env: WorkerEnv):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = torch_device(cfg.device)
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model)
        dtype = getattr(torch, cfg.dtype) if cfg.dtype != "auto" else "auto"
        self.model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=dtype).to(device).eval()
        self.device, self.cfg, self.replica = device, cfg, env.replica
        self.num_parameters = float(sum(p.numel() for p in self.model.parameters()))
        torch.manual_seed(env.seed)

    async def generate(self, requests: Sequence[ExpandRequest]) -> list[ExpandResult]:
        return await asyncio.to_thread(self._generate, list(requests))

    def _generate(self, requests: list[ExpandRequest]) -> list[ExpandResult]:
        import torch

        tok, out = self.tokenizer, []
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        for max_tokens, group in itertools.groupby(
            sorted(enumerate(requests), key=lambda x: x[1].max_tokens), key=lambda x: x[1].max_tokens
        ):
            items = list(group)
            prompts = [decode_ids(r.prompt_ids) for _, r in items]
            rows = [p for (_, r), p in zip(items, prompts, strict=True) for _ in range(r.k)]
            width = max(map(len, rows))
            ids = torch.tensor([[pad] * (width - len(x)) + x for x in rows], device=self.device)
            mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in rows], device=self.device)
            with torch.no_grad():
                gen = self.model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    do_sample=True,
                    temperature=self.cfg.temperature,
                    top_p=self.cfg.top_p,
                    max_new_tokens=max_tokens,
                    pad_token_id=pad,
                    output_scores=True,
                    return_dict_in_generate=True,
                )
            steps = self.model.compute_transition_scores(gen.sequences, gen.scores, normalize_logits=True)
            new = gen.sequences[:, width:].tolist()
            lps = steps.tolist()
            row = 0
            for i, r in items:
                samples = [self._cut(new[row + j], lps[row + j], r.stop) for j in range(r.k)]
                row += r.k
                result = ExpandResult(
                    samples=tuple(samples),
                    prompt_tokens=count_ids(r.prompt_ids),
                    cached_prompt_tokens=0,  # no prefix cache in plain transformers
                    generated_tokens=sum(count_ids(s.token_ids) for s in samples),
                    replica=self.replica,
                )
                out.append((i, result))
        return [res for _, res in sorted(out, key=lambda x: x[0])]

    def _cut(self, ids: list[int], lps: list[float], stop: str) -> GeneratedStep:
        """Truncates one sample at the delimiter (kept in the ids) or at EOS (dropped)."""
        tok = self.tokenizer
        for n in range(1, len(ids) + 1):
            if ids[n - 1] == tok.eos_token_id:
                return GeneratedStep(
                    tok.decode(ids[: n - 1]), encode_ids(ids[: n - 1]), sum(lps[: n - 1]), "eos"
                )
            text = tok.decode(ids[:n])
            if stop in text:
                return GeneratedStep(text[: text.index(stop)], encode_ids(ids[:n]), sum(lps[:n]), "stop")
        return GeneratedStep(tok.decode(ids), encode_ids(ids), sum(lps), "length")


def check(cfg: HFGeneratorConfig, task: Any) -> Any:
    return load_tokenizer(cfg.model, "generator.model")


register(
    Backend(
        "hf",
        HFGeneratorConfig,
        worker=HFGenerator,
        check=check,
        needs=lambda cfg: ("torch", "transformers"),
        tokenizer=lambda cfg: PromptTokenizer(
            load_tokenizer(cfg.model, "generator.model"), cfg.add_special_tokens
        ),
    )
)
