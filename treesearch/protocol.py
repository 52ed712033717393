"""Requests and results exchanged between the search engine and backends.

Backends are batch transports: ``generate`` and ``score`` take a list of requests from any
number of problems and return one result per request, in order. They know nothing about the
algorithm; the engine knows nothing about where a backend runs (in-process or Ray actors).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ExpandRequest:
    """Expand one prefix by one reasoning step, ``k`` independent samples.

    Attributes:
      problem_id: the tree the prefix belongs to (used for prefix-affinity routing).
      node: the node being expanded.
      prompt_text: prompt + steps so far, each step followed by the delimiter.
      prompt_token_ids: the same prefix as token ids (exact generated ids, for KV reuse).
      k: samples to draw.
      max_tokens: cap on generated tokens per sample.
      stop: the step delimiter (a stop string).
      nonce: how many times this node was expanded before (distinct samples on re-expansion).
    """

    problem_id: str
    node: int
    prompt_text: str
    prompt_token_ids: tuple[int, ...]
    k: int
    max_tokens: int
    stop: str
    nonce: int = 0


@dataclass(frozen=True, slots=True)
class GeneratedStep:
    """One sample. ``token_ids`` include the delimiter token(s) when generation stopped on it;
    ``text`` never includes the delimiter. ``finish_reason``: ``stop`` (delimiter), ``eos``
    (end of sequence) or ``length`` (hit ``max_tokens``)."""

    text: str
    token_ids: tuple[int, ...]
    logprob: float
    finish_reason: str


@dataclass(frozen=True, slots=True)
class ExpandResult:
    samples: tuple[GeneratedStep, ...]
    prompt_tokens: int
    cached_prompt_tokens: int
    generated_tokens: int
    replica: int = -1


@dataclass(frozen=True, slots=True)
class ScoreRequest:
    """Score a chain: the PRM returns one score per step (a causal PRM scores step i from
    the prefix up to step i alone, so a prefix's scores do not depend on what follows)."""

    problem_id: str
    node: int
    prompt: str  # the generator's prompt (the root of the tree)
    steps: tuple[str, ...]
    question: str | None = None  # the raw question PRM formats use; None: the prompt

    @property
    def prm_question(self) -> str:
        return self.prompt if self.question is None else self.question


@dataclass(frozen=True, slots=True)
class ScoreResult:
    step_scores: tuple[float, ...]  # in [0, 1], one per step
    tokens: int  # tokens the PRM ran over


class Generator(Protocol):
    """A batch generation transport (in-process model, Ray actor pool, ...)."""

    num_parameters: float

    def tokenize(self, text: str) -> list[int]: ...

    async def generate(self, requests: Sequence[ExpandRequest]) -> list[ExpandResult]: ...


class Scorer(Protocol):
    """A batch PRM transport. ``count_tokens`` is computed before sending and must be at least
    the ``tokens`` the PRM then reports (exact for model PRMs), so budgets can reserve PRM
    compute safely."""

    num_parameters: float

    def count_tokens(self, request: ScoreRequest) -> int: ...

    async def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]: ...
