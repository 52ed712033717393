"""Deterministic in-process backends for tests and benchmarks: same interfaces as real ones.

* :class:`NoisyOracleGenerator` proposes Game-of-24 steps: with probability ``1 - error_rate``
  a *good* move (legal, 24 still reachable), otherwise an error of the kinds a small policy
  makes (wrong arithmetic, wrong ``left`` list, an unavailable operand, a false ``= 24``, or a
  legal dead end), so that search has something to beat.
* :class:`RulePRM` scores a step 1 if the task's rule check passes (and, with
  ``reachability``, the solver still reaches 24: an oracle), else 0.

Randomness is a pure function of (seed, prompt, node id, nonce, sample index), never of batch
composition or arrival order, so in-process and Ray runs of one seed produce identical trees.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from treesearch.backends.registry import Backend, WorkerEnv, register
from treesearch.errors import ConfigError
from treesearch.protocol import (
    CountState,
    ExpandRequest,
    ExpandResult,
    GeneratedStep,
    ScoreRequest,
    ScoreResult,
    count_ids,
    decode_ids,
    encode_ids,
)
from treesearch.schema import Flag, Float, Probability, section
from treesearch.sections import GeneratorConfig, PRMConfig
from treesearch.tasks import game24 as g24
from treesearch.tasks.base import Problem
from treesearch.verifiers import passes


class ByteTokenizer:
    """UTF-8 bytes as token ids: the token count of ASCII text is its character count."""

    def encode(self, text: str) -> list[int]:
        return list(text.encode())

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(ids).decode(errors="replace")


def stable_rng(*parts: object) -> random.Random:
    h = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(h, "little"))


class PrefixCacheModel:
    """Simulated prefix cache: a prompt hits on its longest previously seen step prefix.

    Prefixes are only cached at step boundaries (the positions right after ``delimiter``),
    like a block cache whose blocks are steps. Unbounded (no eviction).
    """

    def __init__(self, delimiter: str):
        self.delimiter = delimiter
        self._seen: set[str] = set()

    def lookup_and_insert(self, prompt: str) -> int:
        """Characters of ``prompt`` already cached; then caches every step prefix of it."""
        cuts = [i + len(self.delimiter) for i in _find_all(prompt, self.delimiter)]
        hit = 0
        for cut in cuts:
            if prompt[:cut] in self._seen:
                hit = cut
        self._seen.update(prompt[:cut] for cut in cuts)
        return hit


def _find_all(s: str, sub: str) -> list[int]:
    out, i = [], s.find(sub)
    while i != -1:
        out.append(i)
        i = s.find(sub, i + 1)
    return out


class NoisyOracleGenerator:
    """Seeded Game-of-24 step proposer with a tunable error rate (see module docstring).

    Args:
      error_rate: probability that a sample is an error rather than a good move.
      seed: job seed.
      num_parameters: nominal parameter count for FLOPs accounting (the embedded policy's size).
      latency_s: simulated seconds per batch call (0: none), for orchestration benchmarks.
    """

    def __init__(
        self,
        error_rate: float = 0.5,
        seed: int = 0,
        num_parameters: float = 1.28e6,
        latency_s: float = 0.0,
        replica: int = -1,
    ):
        if not 0.0 <= error_rate <= 1.0:
            raise ValueError(f"error_rate must be in [0, 1], got {error_rate}")
        self.error_rate, self.seed = error_rate, seed
        self.num_parameters = num_parameters
        self.latency_s, self.replica = latency_s, replica
        self.tokenizer = ByteTokenizer()
        self.cache = PrefixCacheModel(g24.Game24.step_delimiter)

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    async def generate(self, requests: Sequence[ExpandRequest]) -> list[ExpandResult]:
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        return [self.expand(r) for r in requests]

    def expand(self, req: ExpandRequest) -> ExpandResult:
        prompt_text = self.tokenizer.decode(decode_ids(req.prompt_ids))
        lines = prompt_text.split(req.stop)
        numbers = [int(x) for x in lines[0].split()]
        head = lines[-1] if len(lines) > 1 else ""  # a step begun in the prompt is continued
        steps = [s for s in lines[1:-1] if s]
        state = g24.Game24().state(Problem("", "", {"numbers": numbers}), steps)
        samples = []
        for i in range(req.k):
            rng = stable_rng(self.seed, prompt_text, req.node, req.nonce, i)
            text, good = self._propose(state, rng)
            if head:
                text, good = self._continue(head, text, good, state, rng)
            ids = self.tokenizer.encode(text + req.stop)
            if len(ids) > req.max_tokens:
                ids, finish = ids[: req.max_tokens], "length"
                text = self.tokenizer.decode(ids)
            else:
                finish = "stop"
            # Good moves are likelier under the "policy": informative but noisy priors.
            p = (0.6 if good else 0.25) * rng.uniform(0.5, 1.0)
            samples.append(GeneratedStep(text, encode_ids(ids), math.log(p), finish))
        cached = self.cache.lookup_and_insert(prompt_text)
        prompt_tokens = count_ids(req.prompt_ids)
        return ExpandResult(
            samples=tuple(samples),
            prompt_tokens=prompt_tokens,
            cached_prompt_tokens=min(cached, prompt_tokens),
            generated_tokens=sum(count_ids(s.token_ids) for s in samples),
            replica=self.replica,
        )

    def _propose(self, state: g24.State, rng: random.Random) -> tuple[str, bool]:
        """(step text, is_good)."""
        if len(state) < 2:  # nothing to combine: the chain should have ended
            return f"{g24.fmt_state(state)} = 24 (left: 24)", False
        good = g24.good_moves(state)
        if good and rng.random() >= self.error_rate:
            return rng.choice(good).text(), True
        return self._error(state, rng), False

    def _continue(
        self, head: str, text: str, good: bool, state: g24.State, rng: random.Random
    ) -> tuple[str, bool]:
        """The rest of a step whose ``head`` the prompt ends with: of up to 32 proposals
        (``text`` first), the first that begins with the head, else a rest that cannot parse."""
        for _ in range(32):
            if text.startswith(head):
                return text[len(head) :], good
            text, good = self._propose(state, rng)
        return " ?", False

    @staticmethod
    def _error(state: g24.State, rng: random.Random) -> str:
        moves = list(g24.legal_moves(state))
        m = rng.choice(moves)
        kind = rng.randrange(5)
        if kind == 0:  # wrong arithmetic, consistent left list
            r = m.result + rng.choice([-2, -1, 1, 2])
            left = list(m.left)
            left.remove(m.result)
            return g24.Move(m.a, m.op, m.b, r, g24.state_of([*left, r])).text()
        if kind == 1:  # right arithmetic, wrong left list (drops or invents a number)
            left = list(m.left)
            if len(left) > 1:
                left.pop(rng.randrange(len(left)))
            else:
                left.append(Fraction(rng.randint(1, 13)))
            return g24.Move(m.a, m.op, m.b, m.result, g24.state_of(left)).text()
        if kind == 2:  # an operand that is not available
            fake = Fraction(rng.choice([x for x in range(1, 14) if Fraction(x) not in state]))
            rest = list(state)
            rest.remove(m.b)
            rest.remove(m.a)
            r = g24.apply_op(m.a, m.op, fake) or Fraction(0)
            return g24.Move(m.a, m.op, fake, r, g24.state_of([*rest, r])).text()
        if kind == 3 and len(state) == 2:  # false "= 24"
            return g24.Move(m.a, m.op, m.b, g24.TARGET, (g24.TARGET,)).text()
        return m.text()  # a legal move, possibly a dead end


class ByteCounter:
    """PRM-token counts as UTF-8 bytes of prompt + steps + delimiters (exact, additive)."""

    def __init__(self, delimiter: str):
        self.delimiter_bytes = len(delimiter.encode())

    def root(self, question: str, prompt: str) -> CountState:
        return (len(question.encode()),)

    def extend(self, state: CountState, step: str) -> CountState:
        return (state[0] + len(step.encode()) + self.delimiter_bytes,)

    def rebase(self, state: CountState, exact: int) -> CountState:
        return (exact,)


class RulePRM:
    """The task's rule verifier as a PRM; with ``reachability`` the solver oracle too.

    Scores are in {0, 1}; tokens counted as the UTF-8 bytes of prompt + steps + delimiters.
    ``latency_s``: simulated seconds per batch call (tests, benchmarks).
    """

    def __init__(
        self,
        task: g24.Game24,
        reachability: bool = True,
        num_parameters: float = 0.0,
        latency_s: float = 0.0,
    ):
        self.task, self.reachability = task, reachability
        self.num_parameters, self.latency_s = num_parameters, latency_s
        self.counter = ByteCounter(task.step_delimiter)
        self._checks = ("rule", "reachability") if reachability else ("rule",)

    def count_tokens(self, question: str, steps: Sequence[str]) -> int:
        d = self.task.step_delimiter
        return len((question + "".join(s + d for s in steps)).encode())

    async def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        return [self.score_one(r) for r in requests]

    def score_one(self, req: ScoreRequest) -> ScoreResult:
        tokens = tuple(self.count_tokens(req.question, chain) for chain in req.chains)
        if req.max_tokens and sum(tokens) > req.max_tokens:
            return ScoreResult((), tokens, refused=True)
        problem = Problem("", req.question, {"numbers": [int(x) for x in req.question.split()]})
        scores = tuple(
            tuple(float(ok) for ok in passes(self.task, problem, chain, self._checks)) for chain in req.chains
        )
        return ScoreResult(scores, tokens)


# ----------------------------------------------------------------------------- registration
Parameters = Float(ge=0, le=1e15)
Latency = Float(ge=0, le=3600)


@section
class NoisyOracleConfig(GeneratorConfig):
    """``generator: {backend: noisy_oracle}``: the seeded Game-of-24 proposer (no model)."""

    error_rate: Probability = 0.5  # probability a proposed step is an error
    num_parameters: Parameters = 1.28e6  # nominal size for FLOPs (the embedded policy's)
    latency_s: Latency = 0.0  # simulated seconds per batch call (tests, benchmarks)


@section
class RuleConfig(PRMConfig):
    """``prm: {backend: rule}``: the Game-of-24 rule check as a PRM (no model)."""

    reachability: Flag = True  # also require 24 reachable (an ORACLE: a ceiling)
    num_parameters: Parameters = 0.0  # nominal size for FLOPs
    latency_s: Latency = 0.0  # simulated seconds per batch call (tests, benchmarks)


def game24_only(cfg: Any, task: Any) -> None:
    if not isinstance(task, g24.Game24):
        raise ConfigError(f"{cfg.backend} supports task game24 only, not {task.name}")


def _oracle_worker(cfg: NoisyOracleConfig, env: WorkerEnv) -> NoisyOracleGenerator:
    try:
        return NoisyOracleGenerator(cfg.error_rate, env.seed, cfg.num_parameters, cfg.latency_s, env.replica)
    except ValueError as e:
        raise ConfigError(f"generator: {e}") from e


def _check_oracle(cfg: NoisyOracleConfig, task: Any) -> None:
    game24_only(cfg, task)
    _oracle_worker(cfg, WorkerEnv())


register(
    Backend(
        "noisy_oracle",
        NoisyOracleConfig,
        worker=_oracle_worker,
        check=_check_oracle,
        tokenizer=lambda cfg: ByteTokenizer(),
        in_process=True,
    )
)
register(
    Backend(
        "rule",
        RuleConfig,
        worker=lambda cfg, env: RulePRM(g24.Game24(), cfg.reachability, cfg.num_parameters, cfg.latency_s),
        check=game24_only,
        counter=lambda cfg, task, loaded: ByteCounter(g24.Game24.step_delimiter),
        in_process=True,
        oracle=lambda cfg: cfg.reachability,
    )
)
