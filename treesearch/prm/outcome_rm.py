"""Outcome reward model used step-wise: a sequence-classification model scores each prefix.

An ORM scores whole chains; to give every step a value it is run on each prefix
(prompt + steps 1..i, steps joined by the delimiter), reading the row's last token. Cost is
the tokens of every prefix, which the ledger counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from treesearch.prm.base import PrefixRowCounter, PRMRow


@dataclass(frozen=True)
class OutcomeRMFormat:
    delimiter: str = "\n"
    head: str = "sequence_classification"

    def validate(self, tokenizer: Any) -> None:
        return None

    def label_ids(self, tokenizer: Any) -> tuple[int, int]:
        return (1, 0)

    def rows(self, tokenizer: Any, prompt: str, steps: Sequence[str]) -> list[PRMRow]:
        out = []
        for i in range(1, len(steps) + 1):
            text = prompt + self.delimiter.join(steps[:i]) + self.delimiter
            ids = tuple(tokenizer.encode(text))
            out.append(PRMRow(ids, (len(ids) - 1,)))
        return out

    def counter(self, tokenizer: Any) -> PrefixRowCounter:
        return PrefixRowCounter(tokenizer, self.delimiter)
