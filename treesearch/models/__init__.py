"""The embedded Game-of-24 models (trained by :mod:`treesearch.training`, ``make models``).

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


def embedded_model(role: str) -> Path:
    """The shipped model dir for ``role`` (``policy`` or ``prm``)."""
    if role not in ("policy", "prm"):
        raise ValueError(f"no embedded model for role {role!r} (policy, prm)")
    return EMBEDDED_DIR / role


def with_embedded_models(cfg: JobConfig) -> JobConfig:
    """``cfg`` with the embedded models filled in where a game24 job names none."""
    if cfg.task.name != "game24":
        return cfg
    sections = {}
    for name, section in (("generator", cfg.generator), ("prm", cfg.prm)):
        if section.embedded is not None and not section.model:  # type: ignore[attr-defined]
            sections[name] = dataclasses.replace(section, model=str(embedded_model(section.embedded)))
    return dataclasses.replace(cfg, **sections)
