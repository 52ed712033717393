"""Math-Shepherd PRM format (Wang et al., 2024; model card peiyi9979/math-shepherd-mistral-7b-prm).

The card's input is ``f"{question} {output}"`` where ``output`` is the steps joined by newlines,
each step followed by `` ки`` (the step tag). The score of step i is
``softmax(logits[tag_i, [good, bad]])[0]`` with good ``+`` and bad ``-``: a causal LM read at
the tag positions. Tags inside step text are removed so positions map one-to-one to steps.
Served by transformers or by vLLM's pooling runner (``prm.engine: vllm``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from treesearch.prm.base import PieceCounter, PRMFormatError, PRMRow, positions_of, single_token_id


@dataclass(frozen=True)
class MathShepherdFormat:
    step_tag: str = "ки"
    good_token: str = "+"
    bad_token: str = "-"
    head: str = "lm_labels"

    def validate(self, tokenizer: Any) -> None:
        tag = single_token_id(tokenizer, self.step_tag, "step tag")
        if tag in self.label_ids(tokenizer):
            raise PRMFormatError(f"step tag {self.step_tag!r} must differ from the label tokens")

    def label_ids(self, tokenizer: Any) -> tuple[int, int]:
        good = single_token_id(tokenizer, self.good_token, "good label")
        bad = single_token_id(tokenizer, self.bad_token, "bad label")
        if good == bad:
            raise PRMFormatError("good and bad label tokens must differ")
        return good, bad

    @property
    def tag(self) -> str:
        """The token whose positions carry the step scores."""
        return self.step_tag

    @property
    def labels(self) -> tuple[str, str]:
        return (self.good_token, self.bad_token)

    def clean(self, step: str) -> str:
        return step.replace(self.step_tag, "").strip()

    def text(self, prompt: str, steps: Sequence[str]) -> str:
        return f"{prompt.strip()} " + "\n".join(f"{self.clean(s)} {self.step_tag}" for s in steps)

    def rows(self, tokenizer: Any, prompt: str, steps: Sequence[str]) -> list[PRMRow]:
        ids = tuple(tokenizer.encode(self.text(prompt, steps)))
        tag = single_token_id(tokenizer, self.step_tag, "step tag")
        pos = positions_of(ids, tag)
        if len(pos) != len(steps):
            raise PRMFormatError(f"found {len(pos)} step tags for {len(steps)} steps")
        return [PRMRow(ids, pos)]

    def counter(self, tokenizer: Any) -> PieceCounter:
        """The question part once (special tokens included), then each step's own piece."""
        return PieceCounter(
            tokenizer,
            lambda question: f"{question.strip()} ",
            lambda step, first: (("" if first else "\n") + f"{self.clean(step)} ", 1),  # + the tag
        )
