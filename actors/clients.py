"""The engine's transports to replica pools: a :class:`treesearch.protocol.Generator` and a
``Scorer`` whose requests go to replicas through a :class:`actors.dispatch.Router`.

Both deliver each call's answers as soon as they are in (``dispatch``), so the engine's
batcher never waits on a straggling replica for another replica's answers.
"""

from __future__ import annotations

import pickle
from typing import Any

from actors.dispatch import Router
from actors.replica import encode_batch
from treesearch.batcher import Reply
from treesearch.protocol import ExpandRequest, ExpandResult, ScoreRequest, ScoreResult, TokenCounter
from treesearch.sections import ResourcesConfig
from treesearch.verifiers import ProductScorer


def problem_key(request: Any) -> str:
    return request.problem_id


async def _generate(handle: Any, batch: list) -> tuple[list, int, float | None]:
    return pickle.loads(await handle.generate.remote(encode_batch(batch)))


async def _score(handle: Any, batch: list) -> tuple[list, int, float | None]:
    return pickle.loads(await handle.score.remote(encode_batch(batch)))


def router(handles: list[Any], res: ResourcesConfig, generate: bool) -> Router:
    return Router(
        handles,
        _generate if generate else _score,
        key=problem_key,
        affinity_bound=res.affinity_bound,
        max_batch=res.max_batch,
        max_calls_in_flight=res.max_calls_in_flight,
        request_timeout_s=res.request_timeout_s,
        max_retries=res.max_retries,
        restart_wait_s=res.startup_timeout_s,  # a replica restarting takes as long as one starting
    )


class GeneratorClient:
    """Generation on generator replicas; prompts tokenised here with the model's tokenizer."""

    def __init__(self, handles: list[Any], tokenizer: Any, num_parameters: float, res: ResourcesConfig):
        self.router = router(handles, res, generate=True)
        self.num_parameters = num_parameters
        self._tok = tokenizer

    def tokenize(self, text: str) -> list[int]:
        return self._tok.encode(text)

    async def generate(self, requests: list[ExpandRequest]) -> list[ExpandResult]:
        return await self.router.submit(requests)

    def dispatch(self, requests: list[ExpandRequest], answers: list[Reply]) -> None:
        self.router.dispatch(requests, answers)

    def in_flight(self) -> int:
        """Requests sent to the replicas and not yet answered."""
        return sum(self.router.load)


class ScorerClient:
    """Scoring on PRM replicas; token upper bounds counted here, exact counts there."""

    def __init__(
        self, handles: list[Any], counter: TokenCounter, num_parameters: float, res: ResourcesConfig
    ):
        self.router = router(handles, res, generate=False)
        self.num_parameters = num_parameters
        self.counter = counter

    async def score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        return await self.router.submit(requests)

    def dispatch(self, requests: list[ScoreRequest], answers: list[Reply]) -> None:
        self.router.dispatch(requests, answers)


def dispatch_stats(generator: Any, scorer: Any) -> dict[str, Any]:
    """Routing and fault counters of this process's clients (zeros for in-process backends)."""
    g = generator.router.stats if isinstance(generator, GeneratorClient) else None
    inner = scorer.inner if isinstance(scorer, ProductScorer) else scorer  # through the task checks
    p = inner.router.stats if isinstance(inner, ScorerClient) else None
    return {
        "generator_routed": list(g.routed) if g else [],
        "generator_reissued": g.reissued if g else 0,
        "generator_timeouts": g.timeouts if g else 0,
        "prm_reissued": p.reissued if p else 0,
        "prm_timeouts": p.timeouts if p else 0,
        "affinity_hits": g.affinity_hits if g else 0,
        "affinity_moves": g.affinity_moves if g else 0,
    }


def merge_dispatch_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Counters of several processes' clients added up (``generator_routed`` per replica)."""
    out: dict[str, Any] = {}
    for part in parts:
        for k, v in part.items():
            if isinstance(v, list):
                out[k] = [a + b for a, b in zip(out[k], v, strict=True)] if out.get(k) else list(v)
            else:
                out[k] = out.get(k, 0) + v
    return out
