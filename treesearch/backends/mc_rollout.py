"""Monte-Carlo rollout value as a PRM (Wang et al., 2024, Math-Shepherd's automatic labelling).

The score of step i is the fraction of ``rollouts`` continuations, sampled by the generator
from the prefix up to step i, that end in a correct answer. Correctness uses the task's
ground-truth check, so this is an **ORACLE**: a label source (PRM training data) and a
ceiling, never a default verifier. Works over any :class:`treesearch.protocol.Generator`:
in-process, or the Ray generator pool.

Cost: every rollout token (prompt and generated) is reported as PRM tokens, and FLOPs use
the generator's parameter count. The token bound assumes every rollout runs to the depth
limit with full-length steps, so budget reservations stay safe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from treesearch.backends.registry import Backend, WorkerEnv, register
from treesearch.errors import ConfigError
from treesearch.protocol import (
    CountState,
    ExpandRequest,
    Generator,
    ScoreRequest,
    ScoreResult,
    encode_ids,
)
from treesearch.schema import Count, section
from treesearch.sections import PRMConfig
from treesearch.tasks.base import Problem, Task

TOKEN_SLACK = 2  # per step: a BPE tokenizer may merge across a step boundary


class RolloutCounter:
    """Bound of a chain's rollout tokens; state ``(bound, prefix tokens, steps)``."""

    def __init__(self, generator: Generator, task: Task, rollouts: int, max_step_tokens: int):
        self.generator, self.task = generator, task
        self.rollouts, self.max_step_tokens = rollouts, max_step_tokens
        self.delimiter = task.step_delimiter

    def root(self, question: str, prompt: str) -> CountState:
        return (0, len(self.generator.tokenize(prompt)), 0)

    def extend(self, state: CountState, step: str) -> CountState:
        bound, prefix, depth = state
        prefix += len(self.generator.tokenize(step + self.delimiter)) + TOKEN_SLACK
        depth += 1
        left = max(0, self.task.max_depth - depth)  # rollout steps from this prefix
        bound += self.rollouts * (left * prefix + self.max_step_tokens * left * (left + 1) // 2)
        return (bound, prefix, depth)

    def rebase(self, state: CountState, exact: int) -> CountState:
        return state  # rollouts vary: what one scoring spent says nothing exact of the next


class MonteCarloRolloutPRM:
    def __init__(
        self,
        generator: Generator,
        task: Task,
        problems: Sequence[Problem],
        rollouts: int = 4,
        max_step_tokens: int = 48,
    ):
        if rollouts < 1:
            raise ValueError(f"rollouts must be >= 1, got {rollouts}")
        self.generator, self.task = generator, task
        self.problems = {p.id: p for p in problems}
        self.rollouts, self.max_step_tokens = rollouts, max_step_tokens
        self.num_parameters = generator.num_parameters
        self.counter = RolloutCounter(generator, task, rollouts, max_step_tokens)

    def _prefix(self, prompt: str, steps: Sequence[str]) -> str:
        d = self.task.step_delimiter
        return prompt + "".join(s + d for s in steps)

    async def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        return list(await asyncio.gather(*(self._score_one(r) for r in requests)))

    async def _score_one(self, req: ScoreRequest) -> ScoreResult:
        problem = self.problems[req.problem_id]
        scores, tokens = [], []
        for node, chain in zip(req.nodes, req.chains, strict=True):
            values, used = [], 0
            for i in range(1, len(chain) + 1):
                value, spent = await self._value(problem, req.problem_id, node, list(chain[:i]))
                values.append(value)
                used += spent
            scores.append(tuple(values))
            tokens.append(used)
        return ScoreResult(tuple(scores), tuple(tokens))

    async def _value(
        self, problem: Problem, problem_id: str, node: int, steps: list[str]
    ) -> tuple[float, int]:
        task = self.task
        if task.is_terminal(problem, steps) or len(steps) >= task.max_depth:
            return float(task.is_correct(problem, steps)), 0
        chains = [list(steps) for _ in range(self.rollouts)]
        ids = [encode_ids(self.generator.tokenize(self._prefix(problem.prompt, steps)))] * self.rollouts
        live, tokens, depth = list(range(self.rollouts)), 0, 0
        while live:
            reqs = [
                ExpandRequest(
                    problem_id,
                    node,
                    ids[c],
                    1,
                    self.max_step_tokens,
                    task.step_delimiter,
                    nonce=1_000_000 + len(steps) * 1000 + depth * 100 + c,  # distinct rollouts
                )
                for c in live
            ]
            results = await self.generator.generate(reqs)
            depth += 1
            still = []
            for c, res in zip(live, results, strict=True):
                tokens += res.prompt_tokens + res.generated_tokens
                s = res.samples[0]
                chains[c].append(s.text)
                ids[c] = ids[c] + s.token_ids
                ended = s.finish_reason == "eos" or task.is_terminal(problem, chains[c])
                if not ended and len(chains[c]) < task.max_depth:
                    still.append(c)
            live = still
        correct = sum(task.is_correct(problem, ch) for ch in chains)
        return correct / self.rollouts, tokens


# ----------------------------------------------------------------------------- registration
@section
class MCRolloutConfig(PRMConfig):
    """``prm: {backend: mc_rollout}``: Monte-Carlo rollouts through the generator (an ORACLE)."""

    rollouts: Count = 4  # continuations per step; a step's score is the fraction that end correct


def _worker(cfg: MCRolloutConfig, env: WorkerEnv) -> MonteCarloRolloutPRM:
    try:
        return MonteCarloRolloutPRM(env.generator, env.task, env.problems, cfg.rollouts, env.max_step_tokens)
    except ValueError as e:
        raise ConfigError(f"prm: {e}") from e


register(Backend("mc_rollout", MCRolloutConfig, worker=_worker, engine_side=True, oracle=lambda cfg: True))
