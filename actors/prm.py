"""PRM actors: score partial chains in batches, one score per step.

Workers, chosen by ``(prm.backend, prm.engine)``:

* ``rule``: the task's rule verifier (Game of 24), optionally with solver reachability (an
  oracle);
* a model format from :mod:`treesearch.prm` (``math_shepherd``, ``qwen_prm``, ``outcome_rm``)
  served with ``transformers`` (every format; verified against hand-built inputs in the tests),
  or with vLLM's pooling runner (``math_shepherd``: ``runner="pooling"``, ``convert="classify"``,
  the STEP pooler at the step tag; verified equal to transformers in the tests).

Scores outside [0, 1] or non-finite are handled by the engine (NaN/inf -> lowest, counted).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import ray

from actors.generator import count_parameters
from treesearch.backends.deterministic import RulePRM
from treesearch.prm import FORMATS, PRMRow
from treesearch.protocol import ScoreRequest, ScoreResult
from treesearch.tasks.game24 import Game24


@dataclass(frozen=True)
class PRMSpec:
    """What a PRM replica runs (built from the job config, shipped to the actor)."""

    backend: str  # rule | math_shepherd | qwen_prm | outcome_rm
    engine: str = "transformers"  # transformers | vllm (math_shepherd only)
    model: str | None = None
    format_args: dict[str, Any] = field(default_factory=dict)
    reachability: bool = True  # rule: also require 24 reachable (ORACLE)
    dtype: str = "auto"
    device: str = "auto"
    trust_remote_code: bool = False
    gpu_memory_utilization: float = 0.9
    enforce_eager: bool = False
    max_model_len: int | None = None
    batch_rows: int = 64  # transformers: rows per forward pass
    latency_s: float = 0.0  # rule: simulated seconds per batch call (tests, benchmarks)


def make_format(spec: PRMSpec):
    return FORMATS[spec.backend](**spec.format_args)


class RuleWorker:
    def __init__(self, spec: PRMSpec):
        self.impl = RulePRM(Game24(), spec.reachability)
        self.num_parameters = 0.0
        self.latency_s = spec.latency_s

    async def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        return await self.impl.score(requests)


class TransformersPRMWorker:
    """Runs any :mod:`treesearch.prm` format with transformers, rows padded together."""

    def __init__(self, spec: PRMSpec):
        import torch
        from transformers import (
            AutoModel,
            AutoModelForCausalLM,
            AutoModelForSequenceClassification,
            AutoModelForTokenClassification,
            AutoTokenizer,
        )

        self.fmt = make_format(spec)
        self.tokenizer = AutoTokenizer.from_pretrained(spec.model, trust_remote_code=spec.trust_remote_code)
        self.fmt.validate(self.tokenizer)
        loader = {
            "lm_labels": AutoModelForCausalLM,
            "token_classification": AutoModel if spec.trust_remote_code else AutoModelForTokenClassification,
            "sequence_classification": AutoModelForSequenceClassification,
        }[self.fmt.head]
        device = spec.device if spec.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = getattr(torch, spec.dtype) if spec.dtype != "auto" else "auto"
        self.model = (
            loader.from_pretrained(spec.model, dtype=dtype, trust_remote_code=spec.trust_remote_code)
            .to(device)
            .eval()
        )
        self.device, self.batch_rows = device, spec.batch_rows
        self.num_parameters = float(sum(p.numel() for p in self.model.parameters()))
        self.labels = self.fmt.label_ids(self.tokenizer)

    async def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        return await asyncio.to_thread(self._score, list(requests))

    def _score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        per_req = [self.fmt.rows(self.tokenizer, r.prm_question, r.steps) for r in requests]
        flat = [row for rows in per_req for row in rows]
        scores: list[list[float]] = []
        for s in range(0, len(flat), self.batch_rows):
            scores.extend(self.forward(flat[s : s + self.batch_rows]))
        out, i = [], 0
        for rows in per_req:
            step_scores = [x for k in range(len(rows)) for x in scores[i + k]]
            i += len(rows)
            out.append(ScoreResult(tuple(step_scores), sum(len(r.ids) for r in rows)))
        return out

    def forward(self, rows: list[PRMRow]) -> list[list[float]]:
        """Step probabilities for each row (right-padded batch; causal, so padding is inert)."""
        import torch

        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        width = max(len(r.ids) for r in rows)
        ids = torch.tensor([list(r.ids) + [pad] * (width - len(r.ids)) for r in rows], device=self.device)
        mask = torch.tensor([[1] * len(r.ids) + [0] * (width - len(r.ids)) for r in rows], device=self.device)
        with torch.no_grad():
            out = self.model(input_ids=ids, attention_mask=mask)
        logits = (out.logits if hasattr(out, "logits") else out[0]).float()
        result = []
        for b, r in enumerate(rows):
            if self.fmt.head == "sequence_classification":
                row = logits[b]  # [num_labels], pooled at the last non-pad token
                p = torch.sigmoid(row[0]) if row.numel() == 1 else row.softmax(-1)[1]
                result.append([float(p)])
            elif self.fmt.head == "lm_labels":
                at = logits[b, list(r.positions)][:, list(self.labels)]
                result.append(at.softmax(-1)[:, 0].tolist())
            else:
                result.append(logits[b, list(r.positions)].softmax(-1)[:, 1].tolist())
        return result


class VLLMPoolingPRMWorker:
    """Math-Shepherd through vLLM's pooling runner: STEP pooler at the tag, softmax over (+, -)."""

    def __init__(self, spec: PRMSpec):
        from transformers import AutoTokenizer
        from vllm import LLM
        from vllm.config import PoolerConfig

        self.fmt = make_format(spec)
        if self.fmt.head != "lm_labels":
            raise ValueError(f"prm.engine vllm supports math_shepherd only, not {spec.backend}")
        self.tokenizer = AutoTokenizer.from_pretrained(spec.model)
        self.fmt.validate(self.tokenizer)
        tag_id = self.tokenizer.convert_tokens_to_ids(self.fmt.step_tag)
        self.llm = LLM(
            model=spec.model,
            runner="pooling",
            convert="classify",
            hf_overrides={
                "classifier_from_token": [self.fmt.good_token, self.fmt.bad_token],
                "method": "no_post_processing",
            },
            pooler_config=PoolerConfig(task="token_classify", pooling_type="STEP", step_tag_id=tag_id),
            dtype=spec.dtype,
            gpu_memory_utilization=spec.gpu_memory_utilization,
            enforce_eager=spec.enforce_eager,
            max_model_len=spec.max_model_len,
        )
        self.num_parameters = count_parameters(spec.model)
        # The offline LLM is not thread-safe: concurrent encode() calls from the actor's
        # in-flight requests corrupt its engine-core socket (seen as "b'\\x00\\x00' is not
        # a valid EngineCoreRequestType", then a hang). One call at a time.
        self._lock = threading.Lock()

    async def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        return await asyncio.to_thread(self._score, list(requests))

    def _score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        with self._lock:
            return self._score_locked(requests)

    def _score_locked(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        from vllm import TokensPrompt

        rows = [self.fmt.rows(self.tokenizer, r.prm_question, r.steps)[0] for r in requests]
        outs = self.llm.encode(
            [TokensPrompt(prompt_token_ids=list(r.ids)) for r in rows],
            pooling_task="token_classify",
            use_tqdm=False,
        )
        results = []
        for row, out in zip(rows, outs, strict=True):
            data = out.outputs.data  # [steps, 2]: softmax over (good, bad) at each tag
            results.append(ScoreResult(tuple(float(x) for x in data[:, 0].tolist()), len(row.ids)))
        return results


def make_prm_worker(spec: PRMSpec):
    if spec.backend == "rule":
        return RuleWorker(spec)
    engines = {"transformers": TransformersPRMWorker, "vllm": VLLMPoolingPRMWorker}
    return engines[spec.engine](spec)


@ray.remote
class PRMActor:
    """A PRM replica. Exports ``treesearch_prm_requests`` and ``treesearch_prm_tokens``."""

    def __init__(self, spec: PRMSpec, replica: int):
        from ray.util.metrics import Counter

        self.worker = make_prm_worker(spec)
        self.replica = replica
        self.tags = {"replica": str(replica)}
        self.requests = Counter("treesearch_prm_requests", "PRM chains scored", tag_keys=("replica",))
        self.tokens = Counter("treesearch_prm_tokens", "PRM tokens", tag_keys=("replica",))

    async def info(self) -> dict[str, Any]:
        return {"replica": self.replica, "num_parameters": self.worker.num_parameters, "pid": os.getpid()}

    async def score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        results = await self.worker.score(requests)
        tokens = sum(r.tokens for r in results)
        if requests:  # Ray counters accept only positive increments
            self.requests.inc(len(requests), self.tags)
        if tokens > 0:
            self.tokens.inc(tokens, self.tags)
        return results
