"""PRM input formats: how a (prompt, steps) chain becomes model inputs and where scores are read.

A format is declarative: it builds token rows and the positions whose outputs are the step
scores, and names the head that turns outputs into a probability:

* ``lm_labels``: a causal LM; P(good) = softmax(logits[[good, bad]])[0] at each position;
* ``token_classification``: P(class 1) = softmax(logits)[1] at each position;
* ``sequence_classification``: sigmoid (1 label) or softmax[1] (2 labels) of the row's
  pooled output (its last token).

Formats are used on the driver (to count tokens exactly for budgets, and to check the model's
vocabulary before a job starts) and in the PRM actors (to run the model).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol


class PRMFormatError(ValueError):
    """The model's tokenizer cannot express this format (a tag or label token is missing)."""


@dataclass(frozen=True)
class PRMRow:
    """One model input row and the positions (indices into ``ids``) of its step scores."""

    ids: tuple[int, ...]
    positions: tuple[int, ...]


class PRMFormat(Protocol):
    head: str  # lm_labels | token_classification | sequence_classification

    def validate(self, tokenizer: Any) -> None:
        """Raises :class:`PRMFormatError` naming what is missing from the vocabulary."""
        ...

    def rows(self, tokenizer: Any, prompt: str, steps: Sequence[str]) -> list[PRMRow]:
        """Input rows for a chain; the positions of all rows, in order, give one score per step."""
        ...

    def label_ids(self, tokenizer: Any) -> tuple[int, int]:
        """(good, bad) token ids for ``lm_labels``; unused by the other heads."""
        ...


def single_token_id(tokenizer: Any, text: str, what: str) -> int:
    """The id of ``text`` if it is exactly one token of the vocabulary, else a clear error."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1 or ids[0] == getattr(tokenizer, "unk_token_id", None):
        raise PRMFormatError(f"{what} {text!r} is not a single token of the model's vocabulary (got {ids})")
    return ids[0]


def positions_of(ids: Sequence[int], token: int) -> tuple[int, ...]:
    return tuple(i for i, t in enumerate(ids) if t == token)


def count_tokens(fmt: PRMFormat, tokenizer: Any, prompt: str, steps: Sequence[str]) -> int:
    return sum(len(r.ids) for r in fmt.rows(tokenizer, prompt, steps))
