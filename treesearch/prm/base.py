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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from treesearch.protocol import CountState


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
    """Exact tokens of a whole chain (what the PRM workers run over)."""
    return sum(len(r.ids) for r in fmt.rows(tokenizer, prompt, steps))


def utf8_len(text: str) -> int:
    """Bytes of ``text``: an upper bound of its tokens for any tokenizer whose tokens each
    cover at least one byte (byte-level BPE, SentencePiece with byte fallback, characters)."""
    return len(text) if text.isascii() else len(text.encode())


class PieceCounter:
    """Token bounds for a format whose input is a frame, the question, then one piece per
    step. The question is tokenised once per problem; a step's piece is bounded by its UTF-8
    bytes plus the special tokens it adds (no tokenisation on the hot path: a tokenizer call
    costs 40-70 us, a byte count under 1 us). Exact for character tokenizers; for BPE the
    slack is a few x one step's tokens, since a node's count is rebased on the exact count
    the PRM reports for its parent. State: ``(bound, steps)``.

    Args:
      question_piece: the text the question contributes.
      step_piece: ``step_piece(step, first) -> (text, special tokens)`` a step contributes.
      base: tokens of the frame around them (e.g. a chat template), counted once.
      special: whether the question's tokenisation adds the tokenizer's special tokens.
    """

    def __init__(
        self,
        tokenizer: Any,
        question_piece: Callable[[str], str],
        step_piece: Callable[[str, bool], tuple[str, int]],
        base: int = 0,
        special: bool = True,
    ):
        self.tokenizer, self.question_piece, self.step_piece = tokenizer, question_piece, step_piece
        self.base, self.special = base, special

    def root(self, question: str, prompt: str) -> CountState:
        ids = self.tokenizer.encode(self.question_piece(question), add_special_tokens=self.special)
        return (self.base + len(ids), 0)

    def extend(self, state: CountState, step: str) -> CountState:
        bound, steps = state
        text, special = self.step_piece(step, steps == 0)
        return (bound + utf8_len(text) + special, steps + 1)

    def rebase(self, state: CountState, exact: int) -> CountState:
        return (exact, state[1])


class PrefixRowCounter:
    """Token bounds for a format that reads every prefix as its own row (an outcome RM):
    state ``(bound of all rows, bound of the last row)``; steps bounded by their bytes."""

    def __init__(self, tokenizer: Any, delimiter: str):
        self.tokenizer, self.delimiter = tokenizer, delimiter

    def root(self, question: str, prompt: str) -> CountState:
        return (0, len(self.tokenizer.encode(question)))

    def extend(self, state: CountState, step: str) -> CountState:
        total, row = state
        row += utf8_len(step + self.delimiter)
        return (total + row, row)

    def rebase(self, state: CountState, exact: int) -> CountState:
        return (exact, state[1])
