"""Requests and results exchanged between the search engine and backends.

Backends are batch transports: ``generate`` and ``score`` take a list of requests from any
number of problems and return one result per request, in order. They know nothing about the
algorithm; the engine knows nothing about where a backend runs (in-process or Ray actors).

Requests and results are ``NamedTuple``s (they pickle as plain tuples: ~1 us each instead of
~4 us for slotted dataclasses) and token ids travel as bytes (``uint32`` little-endian: a
2,000-id prefix serialises in ~5 us instead of ~33 us as a tuple of ints). A request carries
only what its backend reads: the generator gets token ids, never the prefix text.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Sequence
from typing import NamedTuple, Protocol, runtime_checkable

_SWAP = sys.byteorder != "little"


def encode_ids(ids: Sequence[int]) -> bytes:
    """Token ids as ``uint32`` little-endian bytes (the wire and cache form)."""
    a = array("I", ids)
    if _SWAP:
        a.byteswap()
    return a.tobytes()


def decode_ids(data: bytes) -> list[int]:
    """The inverse of :func:`encode_ids`."""
    a = array("I")
    a.frombytes(data)
    if _SWAP:
        a.byteswap()
    return a.tolist()


def count_ids(data: bytes) -> int:
    """Number of token ids in :func:`encode_ids` bytes."""
    return len(data) >> 2


class BackendUnavailable(RuntimeError):
    """A backend can serve nothing any more (every replica of a pool is gone): the job stops.
    Other errors of a request fail only the problems that sent it."""


class ExpandRequest(NamedTuple):
    """Expand one prefix by one reasoning step, ``k`` independent samples.

    Attributes:
      problem_id: the tree the prefix belongs to (the prefix-affinity routing key).
      node: the node being expanded.
      prompt_ids: the prefix (prompt + steps, each with its delimiter) as :func:`encode_ids`
        bytes: the exact generated ids, so a replica's prefix cache is reused.
      k: samples to draw.
      max_tokens: cap on generated tokens per sample.
      stop: the step delimiter (a stop string).
      nonce: how many times this node was expanded before (distinct samples on re-expansion).
    """

    problem_id: str
    node: int
    prompt_ids: bytes
    k: int
    max_tokens: int
    stop: str
    nonce: int = 0


class GeneratedStep(NamedTuple):
    """One sample. ``token_ids`` (:func:`encode_ids` bytes) include the delimiter token(s) when
    generation stopped on it; ``text`` never includes the delimiter. ``finish_reason``: ``stop``
    (delimiter), ``eos`` (end of sequence) or ``length`` (hit ``max_tokens``)."""

    text: str
    token_ids: bytes
    logprob: float
    finish_reason: str


class ExpandResult(NamedTuple):
    samples: tuple[GeneratedStep, ...]
    prompt_tokens: int
    cached_prompt_tokens: int
    generated_tokens: int
    replica: int = -1


class ScoreRequest(NamedTuple):
    """Score chains of one problem: the PRM returns one score per step of each chain (a causal
    PRM scores step i from the prefix up to step i alone, so a prefix's scores do not depend
    on what follows). One request carries every chain a search asks about at once (a beam's
    candidates, an MCTS wave's children): one object per ask, not per node.

    Attributes:
      nodes: the tree node each chain belongs to (its last step, or where a rollout began).
      question: what the PRM's input format puts before the steps (the task's raw question,
        or the generator's prompt where the task has none).
      chains: the chains, each every step from the first.
      max_tokens: the engine's reservation for all the chains together; a PRM whose exact
        count is larger refuses (``ScoreResult.refused``) without running, so no budget is
        ever exceeded. 0: no cap.
    """

    problem_id: str
    nodes: tuple[int, ...]
    question: str
    chains: tuple[tuple[str, ...], ...]
    max_tokens: int = 0

    @classmethod
    def one(
        cls, problem_id: str, node: int, question: str, steps: Sequence[str], max_tokens: int = 0
    ) -> ScoreRequest:
        """A request for a single chain."""
        return cls(problem_id, (node,), question, (tuple(steps),), max_tokens)


class ScoreResult(NamedTuple):
    """Per chain of the request: its step scores (in [0, 1], one per step) and the tokens the PRM
    ran over for it. ``refused``: over the reservation, nothing was run (scores empty, tokens
    the exact counts it would have run over)."""

    scores: tuple[tuple[float, ...], ...]
    tokens: tuple[int, ...]
    refused: bool = False


class Generator(Protocol):
    """A batch generation transport (in-process model, Ray actor pool, ...)."""

    num_parameters: float

    def tokenize(self, text: str) -> list[int]: ...

    async def generate(self, requests: Sequence[ExpandRequest]) -> list[ExpandResult]: ...


CountState = tuple[int, ...]  # [0]: upper bound of the chain's PRM tokens; the rest: the format's own


class TokenCounter(Protocol):
    """Upper bounds of a PRM's input tokens, kept per node and extended one step at a time.

    ``root(question, prompt)`` is the state of a chain with no steps (``question``: what the
    format puts before the steps; ``prompt``: the generator's prompt, for PRMs that
    generate); ``extend(state, step)`` is the state once ``step`` is appended, costing no
    tokenisation of the whole chain; ``rebase(state, exact)`` replaces the bound by the exact
    count the PRM reported for the chain, so a child's bound is its parent's exact count plus
    its own step's bound. ``state[0]`` bounds the tokens the PRM runs over; the PRM checks it
    exactly (:attr:`ScoreRequest.max_tokens`). Later items are the format's bookkeeping.
    """

    def root(self, question: str, prompt: str) -> CountState: ...

    def extend(self, state: CountState, step: str) -> CountState: ...

    def rebase(self, state: CountState, exact: int) -> CountState:
        """``state`` once the PRM has reported the chain's exact count."""
        ...


class Scorer(Protocol):
    """A batch PRM transport; ``counter`` gives the engine cheap PRM-token upper bounds."""

    num_parameters: float
    counter: TokenCounter

    async def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]: ...


@runtime_checkable
class Dispatching(Protocol):
    """A transport that answers each request as soon as its own replica has (a straggling
    replica then holds only its own requests, not the whole batch)."""

    def dispatch(self, requests: list, answers: list) -> None:
        """Sends ``requests``; calls ``answers[i].set(result)`` (or ``.fail(error)``) for
        ``requests[i]`` as soon as it is in (:class:`treesearch.batcher.Reply`)."""
        ...
