"""Monte-Carlo rollout value as a PRM (Wang et al., 2024, Math-Shepherd's automatic labelling).

The score of step i is the fraction of ``rollouts`` continuations, sampled by the generator
from the prefix up to step i, that end in a correct answer. Correctness uses the task's
ground-truth check, so this is an **ORACLE**: a label source (PRM training data) and a
ceiling, never a default verifier. Works over any :class:`treesearch.protocol.Generator`:
in-process, or the Ray generator pool.

Cost: every rollout token (prompt and generated) is reported as PRM tokens, and FLOPs use
the generator's parameter count. ``count_tokens`` is an upper bound (rollouts may stop early),
so budget reservations stay safe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from treesearch.protocol import ExpandRequest, Generator, ScoreRequest, ScoreResult
from treesearch.tasks.base import Problem, Task


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

    def _prefix(self, prompt: str, steps: Sequence[str]) -> str:
        d = self.task.step_delimiter
        return prompt + "".join(s + d for s in steps)

    def count_tokens(self, request: ScoreRequest) -> int:
        """Upper bound: every rollout runs to the depth limit with full-length steps."""
        total = 0
        for i in range(1, len(request.steps) + 1):
            prefix = len(self.generator.tokenize(self._prefix(request.prompt, request.steps[:i])))
            remaining = self.task.max_depth - i
            for j in range(remaining):
                total += self.rollouts * (prefix + j * self.max_step_tokens + self.max_step_tokens)
        return total

    async def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        return list(await asyncio.gather(*(self._score_one(r) for r in requests)))

    async def _score_one(self, req: ScoreRequest) -> ScoreResult:
        problem = self.problems[req.problem_id]
        values, tokens = [], 0
        for i in range(1, len(req.steps) + 1):
            value, used = await self._value(problem, req, list(req.steps[:i]))
            values.append(value)
            tokens += used
        return ScoreResult(tuple(values), tokens)

    async def _value(self, problem: Problem, req: ScoreRequest, steps: list[str]) -> tuple[float, int]:
        task = self.task
        if task.is_terminal(problem, steps) or len(steps) >= task.max_depth:
            return float(task.is_correct(problem, steps)), 0
        chains = [list(steps) for _ in range(self.rollouts)]
        ids = [tuple(self.generator.tokenize(self._prefix(req.prompt, steps)))] * self.rollouts
        live, tokens, depth = list(range(self.rollouts)), 0, 0
        while live:
            reqs = [
                ExpandRequest(
                    req.problem_id,
                    req.node,
                    self._prefix(req.prompt, chains[c]),
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
