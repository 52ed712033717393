"""The embedded Game-of-24 models and the code that trains them.

``game24/policy`` and ``game24/prm`` are HF model dirs (float32 safetensors, a character
tokenizer) shipped inside the package; ``game24/MODEL_CARD.md`` says how they were trained and
what they measure. A game24 job whose generator or Math-Shepherd PRM names no model uses them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from treesearch.config import JobConfig

EMBEDDED_DIR = Path(__file__).parent / "game24"
MODEL_BACKENDS = ("vllm", "hf")  # generator backends that load a model


def embedded_model(role: str) -> Path:
    """The shipped model dir for ``role`` (``policy`` or ``prm``)."""
    if role not in ("policy", "prm"):
        raise ValueError(f"no embedded model for role {role!r} (policy, prm)")
    return EMBEDDED_DIR / role


def with_embedded_models(cfg: JobConfig) -> JobConfig:
    """``cfg`` with the embedded models filled in where a game24 job names none."""
    if cfg.task.name != "game24":
        return cfg
    gen, prm = cfg.generator, cfg.prm
    if gen.backend in MODEL_BACKENDS and not gen.model:
        gen = dataclasses.replace(gen, model=str(embedded_model("policy")))
    if prm.backend == "math_shepherd" and not prm.model:
        prm = dataclasses.replace(prm, model=str(embedded_model("prm")))
    return dataclasses.replace(cfg, generator=gen, prm=prm)
