"""Qwen2.5-Math-PRM format (model card Qwen/Qwen2.5-Math-PRM-7B).

The card builds a chat: system prompt, the question as the user turn, and as the assistant
turn the steps joined by ``<extra_0>`` with a trailing ``<extra_0>``; it applies the model's
chat template (no generation prompt) and reads ``softmax(logits)[1]`` of the 2-class
token-classification head at every ``<extra_0>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from treesearch.prm.base import PRMFormatError, PRMRow, positions_of, single_token_id

QWEN_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass(frozen=True)
class QwenPRMFormat:
    separator: str = "<extra_0>"
    system_prompt: str = QWEN_SYSTEM
    head: str = "token_classification"

    def validate(self, tokenizer: Any) -> None:
        single_token_id(tokenizer, self.separator, "step separator")
        if not getattr(tokenizer, "chat_template", None):
            raise PRMFormatError("the PRM's tokenizer has no chat template (qwen_prm needs one)")

    def label_ids(self, tokenizer: Any) -> tuple[int, int]:
        return (1, 0)  # class indices of the token-classification head

    def text(self, tokenizer: Any, prompt: str, steps: Sequence[str]) -> str:
        clean = [s.replace(self.separator, "") for s in steps]
        messages = [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": prompt.strip()},
            {"role": "assistant", "content": self.separator.join(clean) + self.separator},
        ]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)

    def rows(self, tokenizer: Any, prompt: str, steps: Sequence[str]) -> list[PRMRow]:
        ids = tuple(tokenizer.encode(self.text(tokenizer, prompt, steps), add_special_tokens=False))
        pos = positions_of(ids, single_token_id(tokenizer, self.separator, "step separator"))
        if len(pos) != len(steps):
            raise PRMFormatError(f"found {len(pos)} separators for {len(steps)} steps")
        return [PRMRow(ids, pos)]
