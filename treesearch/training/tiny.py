"""Tiny HF-format models with a character tokenizer (tests, and the embedded default).

Every symbol is one token, so token counts are character counts. The tokenizer is a
``tokenizers`` WordLevel model over single characters, saved as ``tokenizer.json`` and loaded
by ``transformers.AutoTokenizer`` and by vLLM alike. Extra special tokens (a PRM's step tag,
``<extra_0>``) are added tokens, matched before the character split.

Heavy imports (torch, transformers, tokenizers) happen inside functions: the core package does
not need them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

# Game of 24 prompts and steps: digits, operators, "left:", parentheses, space, newline.
GAME24_SYMBOLS = "0123456789+-*/=() left:\n"
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")

DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def build_char_tokenizer(
    symbols: str = GAME24_SYMBOLS,
    added_tokens: Sequence[str] = (),
    chat_template: str | None = None,
):
    """A ``PreTrainedTokenizerFast``: specials, then one id per symbol, then ``added_tokens``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = list(dict.fromkeys(symbols))
    vocab = {t: i for i, t in enumerate([*SPECIALS, *chars])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )
    if added_tokens:
        fast.add_special_tokens({"additional_special_tokens": list(added_tokens)})
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast


def build_tiny_llama(
    out_dir: str | Path,
    tokenizer,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 2,  # head_dim = hidden / heads must be >= 32 for vLLM CPU attention
    max_positions: int = 512,
    seed: int = 0,
    head: str = "causal_lm",
    num_labels: int = 2,
) -> Path:
    """Writes a randomly initialised Llama (``head``: causal_lm | token_classification |
    sequence_classification) plus ``tokenizer`` to ``out_dir``; returns the path."""
    import torch
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        LlamaForSequenceClassification,
        LlamaForTokenClassification,
    )

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        num_labels=num_labels,
    )
    cls = {
        "causal_lm": LlamaForCausalLM,
        "token_classification": LlamaForTokenClassification,
        "sequence_classification": LlamaForSequenceClassification,
    }[head]
    model = cls(config)
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


# The architecture of Qwen2.5-Math-PRM (its model card's remote code): a Qwen2 body and a
# two-layer token-classification head ``score`` with 2 labels. vLLM serves it natively
# (``Qwen2ForProcessRewardModel``); transformers loads this file as remote code.
QWEN2_PRM_MODELING = """
from torch import nn
from transformers import Qwen2Model, Qwen2PreTrainedModel


class Qwen2ForProcessRewardModel(Qwen2PreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.model = Qwen2Model(config)
        self.score = nn.Sequential(
            nn.Linear(config.hidden_size, config.hidden_size), nn.ReLU(), nn.Linear(config.hidden_size, 2)
        )
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return (self.score(hidden),)
"""


def build_tiny_qwen2_prm(
    out_dir: str | Path, tokenizer, hidden: int = 64, layers: int = 2, heads: int = 2, seed: int = 0
) -> Path:
    """Writes a randomly initialised Qwen2.5-Math-PRM-architecture model (Qwen2 body, 2-label
    ``score`` head; remote code for transformers) plus ``tokenizer`` to ``out_dir``."""
    import json

    import torch
    from transformers import Qwen2Config

    namespace: dict = {}
    exec(QWEN2_PRM_MODELING, namespace)  # the class this directory ships as remote code
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        num_labels=2,
    )
    model = namespace["Qwen2ForProcessRewardModel"](config)
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "modeling_tiny_qwen2_prm.py").write_text(QWEN2_PRM_MODELING)
    cfg = json.loads((out / "config.json").read_text())
    cfg["architectures"] = ["Qwen2ForProcessRewardModel"]
    cfg["auto_map"] = {"AutoModel": "modeling_tiny_qwen2_prm.Qwen2ForProcessRewardModel"}
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return out
