"""The embedded Game-of-24 models (trained by :mod:`treesearch.training`, ``make models``).

``game24/policy`` and ``game24/prm`` are HF model dirs (float32 safetensors, a character
tokenizer) shipped inside the package; ``game24/MODEL_CARD.md`` says how they were trained and
what they measure. A game24 job whose generator or Math-Shepherd PRM names no model uses them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

EMBEDDED_DIR = Path(__file__).parent / "game24"


def embedded_model(role: str) -> Path:
    """The shipped model dir for ``role`` (``policy`` or ``prm``)."""
    if role not in ("policy", "prm"):
        raise ValueError(f"no embedded model for role {role!r} (policy, prm)")
    return EMBEDDED_DIR / role


def with_embedded_model(task_name: str, section: Any) -> Any:
    """A typed ``generator:`` / ``prm:`` section with the embedded model filled in where a
    game24 job names none."""
    if task_name != "game24" or section.embedded is None or section.model:
        return section
    return dataclasses.replace(section, model=str(embedded_model(section.embedded)))
