"""Model-backed PRMs: one input format (:mod:`treesearch.prm`) served by one of two engines.

* ``engine: transformers``: any format (rows padded together, ``batch_rows`` at a time);
* ``engine: vllm``: vLLM's pooling runner (``runner="pooling"``, ``convert="classify"``, the
  STEP pooler at the step tag) for formats read at tag positions of a causal LM
  (Math-Shepherd); verified equal to transformers in the tests.

Each format is registered as a backend (``prm.backend``) with :func:`model_prm`
(:mod:`treesearch.backends.prm_models`); its config extends :class:`ModelPRMConfig` with the
format's own fields. Every worker checks a request's
exact token count against the engine's reservation (``ScoreRequest.max_tokens``) and refuses,
without running the model, a request that would go over.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from typing import Any, Literal

from treesearch.backends.hf import count_parameters, load_tokenizer, torch_device
from treesearch.backends.registry import Backend, WorkerEnv
from treesearch.errors import ConfigError
from treesearch.prm.base import PRMFormat, PRMFormatError, PRMRow
from treesearch.protocol import ScoreRequest, ScoreResult
from treesearch.schema import Count, Flag, Float, Int, Text, section
from treesearch.sections import PRMConfig

Dtype = Literal["auto", "float32", "float16", "bfloat16", "float", "half"]


@section
class ModelPRMConfig(PRMConfig):
    """What every model-backed PRM has (the format's own fields extend it)."""

    model: Text | None = None  # HF model dir
    engine: Literal["transformers", "vllm"] = "transformers"
    dtype: Dtype = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"  # transformers
    trust_remote_code: Flag = False  # e.g. Qwen2.5-Math-PRM's own modelling code
    batch_rows: Count = 64  # transformers: rows per forward pass
    gpu_memory_utilization: Float(gt=0, le=1) = 0.9  # vllm
    enforce_eager: Flag = False  # vllm
    max_model_len: Int(ge=1, le=10_000_000) | None = None  # vllm


FormatOf = Callable[[Any], PRMFormat]


def chain_rows(fmt: PRMFormat, tokenizer: Any, req: ScoreRequest) -> list[list[PRMRow]]:
    """The input rows of each chain of a request."""
    return [fmt.rows(tokenizer, req.question, chain) for chain in req.chains]


def over_budget(req: ScoreRequest, rows: list[list[PRMRow]]) -> tuple[int, ...] | None:
    """The chains' exact token counts if together they are over the engine's reservation."""
    tokens = tuple(sum(len(x.ids) for x in r) for r in rows)
    return tokens if req.max_tokens and sum(tokens) > req.max_tokens else None


class TransformersPRM:
    """Any format with transformers, rows padded together."""

    def __init__(self, cfg: ModelPRMConfig, fmt: PRMFormat):
        import torch
        from transformers import (
            AutoModel,
            AutoModelForCausalLM,
            AutoModelForSequenceClassification,
            AutoModelForTokenClassification,
            AutoTokenizer,
        )

        self.fmt = fmt
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model, trust_remote_code=cfg.trust_remote_code)
        self.fmt.validate(self.tokenizer)
        loader = {
            "lm_labels": AutoModelForCausalLM,
            "token_classification": AutoModel if cfg.trust_remote_code else AutoModelForTokenClassification,
            "sequence_classification": AutoModelForSequenceClassification,
        }[self.fmt.head]
        device = torch_device(cfg.device)
        dtype = getattr(torch, cfg.dtype) if cfg.dtype != "auto" else "auto"
        self.model = (
            loader.from_pretrained(cfg.model, dtype=dtype, trust_remote_code=cfg.trust_remote_code)
            .to(device)
            .eval()
        )
        self.device, self.batch_rows = device, cfg.batch_rows
        self.num_parameters = float(sum(p.numel() for p in self.model.parameters()))
        self.labels = self.fmt.label_ids(self.tokenizer)

    async def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        return await asyncio.to_thread(self._score, list(requests))

    def _score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        per_req = [chain_rows(self.fmt, self.tokenizer, r) for r in requests]
        over = [over_budget(r, rows) for r, rows in zip(requests, per_req, strict=True)]
        flat = [
            row
            for chains, o in zip(per_req, over, strict=True)
            if o is None
            for rows in chains
            for row in rows
        ]
        scores: list[list[float]] = []
        for s in range(0, len(flat), self.batch_rows):
            scores.extend(self.forward(flat[s : s + self.batch_rows]))
        out, i = [], 0
        for chains, o in zip(per_req, over, strict=True):
            if o is not None:
                out.append(ScoreResult((), o, refused=True))
                continue
            chain_scores, tokens = [], []
            for rows in chains:
                chain_scores.append(tuple(x for k in range(len(rows)) for x in scores[i + k]))
                tokens.append(sum(len(r.ids) for r in rows))
                i += len(rows)
            out.append(ScoreResult(tuple(chain_scores), tuple(tokens)))
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


class VLLMPoolingPRM:
    """A format read at step-tag positions, through vLLM's pooling runner (STEP pooler at the
    tag): a causal LM's (good, bad) label tokens as a 2-way classifier (Math-Shepherd:
    ``convert="classify"``, P(good) = column 0), or a token-classification PRM vLLM serves
    natively (Qwen2.5-Math-PRM's ``Qwen2ForProcessRewardModel``: P(correct) = column 1)."""

    def __init__(self, cfg: ModelPRMConfig, fmt: PRMFormat):
        from transformers import AutoTokenizer
        from vllm import LLM
        from vllm.config import PoolerConfig

        self.fmt = fmt
        if fmt.head not in ("lm_labels", "token_classification"):
            raise ValueError(f"prm.engine vllm serves step-tag formats only, not {cfg.backend}")
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model, trust_remote_code=cfg.trust_remote_code)
        fmt.validate(self.tokenizer)
        tag_id = self.tokenizer.convert_tokens_to_ids(fmt.tag)
        pooler = PoolerConfig(task="token_classify", pooling_type="STEP", step_tag_id=tag_id)
        if fmt.head == "lm_labels":
            extra: dict[str, Any] = {
                "convert": "classify",
                "hf_overrides": {"classifier_from_token": list(fmt.labels), "method": "no_post_processing"},
            }
            self.column = 0  # P(good)
        else:
            extra = {"trust_remote_code": cfg.trust_remote_code}
            self.column = 1  # P(the step is correct)
        self.llm = LLM(
            model=cfg.model,
            runner="pooling",
            pooler_config=pooler,
            dtype=cfg.dtype,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            enforce_eager=cfg.enforce_eager,
            max_model_len=cfg.max_model_len,
            **extra,
        )
        self.num_parameters = count_parameters(cfg.model)
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

        per_req = [chain_rows(self.fmt, self.tokenizer, r) for r in requests]
        over = [over_budget(r, rows) for r, rows in zip(requests, per_req, strict=True)]
        run = [rows[0] for chains, o in zip(per_req, over, strict=True) if o is None for rows in chains]
        outs = iter(
            self.llm.encode(
                [TokensPrompt(prompt_token_ids=list(r.ids)) for r in run],
                pooling_task="token_classify",
                use_tqdm=False,
            )
            if run
            else []
        )
        results = []
        for chains, o in zip(per_req, over, strict=True):
            if o is not None:
                results.append(ScoreResult((), o, refused=True))
                continue
            scores = []
            for _ in chains:
                data = next(outs).outputs.data  # [steps, 2]: softmax over the 2 labels at each tag
                scores.append(tuple(float(x) for x in data[:, self.column].tolist()))
            results.append(ScoreResult(tuple(scores), tuple(len(rows[0].ids) for rows in chains)))
        return results


ENGINES: dict[str, type] = {"transformers": TransformersPRM, "vllm": VLLMPoolingPRM}


def model_prm(name: str, config: type, format_of: FormatOf, vllm: bool = False) -> Backend:
    """The :class:`Backend` of a model-backed format (``vllm``: the pooling engine serves it)."""

    def worker(cfg: ModelPRMConfig, env: WorkerEnv) -> Any:
        return ENGINES[cfg.engine](cfg, format_of(cfg))

    def check(cfg: ModelPRMConfig, task: Any) -> Any:
        if cfg.engine == "vllm" and not vllm:
            raise ConfigError(f"prm.engine: vllm does not serve the {name} format (transformers does)")
        tokenizer = load_tokenizer(cfg.model, "prm.model", cfg.trust_remote_code)
        try:
            format_of(cfg).validate(tokenizer)
        except PRMFormatError as e:
            raise ConfigError(f"prm ({name} format): {e}") from e
        return tokenizer

    def counter(cfg: ModelPRMConfig, task: Any, tokenizer: Any) -> Any:
        return format_of(cfg).counter(tokenizer)

    def needs(cfg: ModelPRMConfig) -> tuple[str, ...]:
        return ("vllm",) if cfg.engine == "vllm" else ("torch", "transformers")

    return Backend(name, config, worker=worker, check=check, counter=counter, needs=needs)
