"""Qwen2.5-Math-PRM format (model card Qwen/Qwen2.5-Math-PRM-7B).

The card builds a chat: system prompt, the question as the user turn, and as the assistant
turn the steps joined by ``<extra_0>`` with a trailing ``<extra_0>``; it applies the model's
chat template (no generation prompt) and reads ``softmax(logits)[1]`` of the 2-class
token-classification head at every ``<extra_0>``. Served by transformers (the model's remote
code: ``trust_remote_code: true``) or by vLLM's pooling runner (``engine: vllm``: vLLM's own
``Qwen2ForProcessRewardModel``, the STEP pooler at ``<extra_0>``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from treesearch.prm.base import PieceCounter, PRMFormatError, PRMRow, positions_of, single_token_id

QWEN_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass(frozen=True)
class QwenPRMFormat:
    separator: str = "<extra_0>"
    system_prompt: str = QWEN_SYSTEM
    head: str = "token_classification"

    @property
    def tag(self) -> str:
        """The token whose positions carry the step scores."""
        return self.separator

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

    def counter(self, tokenizer: Any) -> PieceCounter:
        """The chat around an empty assistant turn once, then ``step + separator`` per step
        (the template puts a separator after every step, the last one included)."""
        # the frame: a one-character question and no steps, less that character and the
        # separator the template ends an empty assistant turn with (counted per step below);
        # an empty question would let the template's newlines around it merge
        frame = self.text(tokenizer, "x", [])
        base = (
            len(tokenizer.encode(frame, add_special_tokens=False))
            - 1
            - len(tokenizer.encode("x", add_special_tokens=False))
        )
        return PieceCounter(
            tokenizer,
            lambda question: question.strip(),
            lambda step, first: (step.replace(self.separator, ""), 1),  # + the separator
            base=base,
            special=False,
        )
