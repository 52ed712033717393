"""The task API: what a search needs to know about a problem domain.

A task gives the prompt, the step delimiter, how to tell a chain is finished and read its
answer, a ground-truth check (used only for evaluation, never by a search), and optionally
a rule-based step verifier that looks at the chain so far and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Problem:
    """One problem instance.

    Attributes:
      id: stable identifier, used as the file name of its tree.
      prompt: the text the generator continues (ends where the first step starts).
      data: task-specific fields (e.g. the four numbers of a Game-of-24 puzzle).
    """

    id: str
    prompt: str
    data: dict[str, Any] = field(default_factory=dict)


class Task(Protocol):
    """Protocol every task implements. ``steps`` never include the delimiter."""

    name: str
    step_delimiter: str
    max_depth: int

    def problems(self) -> list[Problem]: ...

    def is_terminal(self, problem: Problem, steps: Sequence[str]) -> bool:
        """True when the chain has given its final answer."""
        ...

    def extract_answer(self, problem: Problem, steps: Sequence[str]) -> str | None:
        """The chain's final answer, normalised for voting; None if it gives none."""
        ...

    def is_correct(self, problem: Problem, steps: Sequence[str]) -> bool:
        """Ground truth. For evaluation only: a search never calls it."""
        ...

    def verify_step(self, problem: Problem, steps: Sequence[str]) -> bool | None:
        """Rule check of the last step given the earlier ones; None if the task has none."""
        ...
