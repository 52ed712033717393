"""Helpers shared by the backends that load a Hugging Face model directory."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from treesearch.errors import ConfigError


def check_model_dir(path: str | None, field: str) -> Path:
    """The model dir, or a ConfigError naming ``field`` (missing, not a dir, not HF)."""
    if not path:
        raise ConfigError(f"{field}: a model directory is required for this backend")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ConfigError(f"{field}: model directory not found: {p}")
    if not (p / "config.json").is_file():
        raise ConfigError(f"{field}: {p} is not a Hugging Face model directory (no config.json)")
    return p


def load_tokenizer(path: str | None, field: str, trust_remote_code: bool = False) -> Any:
    """The model dir's tokenizer, or a ConfigError with transformers' first line of why not."""
    from transformers import AutoTokenizer

    p = check_model_dir(path, field)
    try:
        return AutoTokenizer.from_pretrained(str(p), trust_remote_code=trust_remote_code)
    except Exception as e:
        raise ConfigError(f"{field}: cannot load a tokenizer from {p}: {str(e).splitlines()[0]}") from e


class PromptTokenizer:
    """``encode(text) -> ids`` with the model's special-token choice (BOS or not)."""

    def __init__(self, tokenizer: Any, add_special_tokens: bool):
        self.tokenizer, self.add_special_tokens = tokenizer, add_special_tokens

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=self.add_special_tokens)


def count_parameters(model_dir: str) -> float:
    """Parameter count from the safetensors headers (no weights loaded)."""
    from safetensors import safe_open

    total = 0
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for name in st.keys():  # noqa: SIM118 (safe_open has no __iter__)
                total += math.prod(st.get_slice(name).get_shape())
    return float(total)


def torch_device(device: str) -> str:
    """``auto`` -> cuda when there is one, else cpu."""
    import torch

    return device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
