"""A replica: one Ray actor hosting one worker of a registered backend (generator or PRM).

The actor is generic: the worker comes from the registry (:mod:`treesearch.backends`) by the
config's ``backend``, and the config object itself is what the worker receives. Every answer
carries the replica's queue depth (requests in flight here, from all callers) and its service
time (:class:`ServiceTime`), so the pools of every search worker can route by expected wait
around a busy or slow replica. Batches travel as one pickle each way
(:func:`encode_batch`).

Exports Prometheus metrics through Ray (tags ``pool``: generator / prm, ``replica``; Ray
prefixes ``ray_`` and exports a counter as ``<name>_total``): generators ``treesearch_generator_requests``,
``treesearch_generated_tokens``, ``treesearch_prompt_tokens``, ``treesearch_cached_prompt_tokens``;
PRMs ``treesearch_prm_requests``, ``treesearch_prm_tokens``; both ``treesearch_busy_seconds``
(counter: seconds with a request here; its rate is the replica's busy fraction) and
``treesearch_queue_depth`` (gauge: requests here now). :meth:`ReplicaActor.load` answers the
same figures to the driver (``treesearch status`` shows them per replica).
"""

from __future__ import annotations

import os
import pickle
import time
from typing import Any

import ray

from treesearch.backends import WorkerEnv, backend_of
from treesearch.sections import GeneratorConfig

GENERATOR_METRICS = {
    "treesearch_generator_requests": "generator requests answered",
    "treesearch_generated_tokens": "tokens sampled by the generator",
    "treesearch_prompt_tokens": "prompt tokens sent to the generator",
    "treesearch_cached_prompt_tokens": "prompt tokens served from the prefix cache",
}


def encode_batch(obj: Any) -> bytes:
    """A batch on the wire: one pickle of the whole list. Ray's own serialiser visits each
    request separately (~3.5x the cost of one pickle of the list), so replicas take and
    return bytes."""
    return pickle.dumps(obj, protocol=5)


PRM_METRICS = {
    "treesearch_prm_requests": "PRM chains scored",
    "treesearch_prm_tokens": "tokens the PRM ran over",
}
TAGS = ("pool", "replica")
BUSY_METRIC = ("treesearch_busy_seconds", "seconds with at least one request on the replica")  # counter
DEPTH_METRIC = ("treesearch_queue_depth", "requests on the replica now, from every caller")  # gauge


class ServiceTime:
    """A replica's speed, reported with each answer (:class:`actors.dispatch.Service`).

    * seconds per request: busy seconds per request answered, as the ratio of two EWMAs over
      answers (busy seconds since the last answer; requests answered), so answers that share
      one engine step (the first brings the step's seconds, the rest none) weigh by requests;
      reported as a decaying minimum of that ratio (it follows a lower one at once and a
      higher one by ``rise`` per answer). On a continuously batching engine the ratio is the
      inverse of its throughput at the load it sees, which rises with load until the engine
      saturates: the minimum is its saturated throughput, so queue depth x this is how long
      the queue ahead of a new request takes, and a lightly loaded replica does not look slow;
    * latency: a call's time from arrival to answer with no queue ahead, one engine step at
      least: a decaying minimum the same way, so a replica that slows down says so within
      tens of calls.

    Attributes:
      seconds_per_request, latency_s: the estimates (None before the first answer).
    """

    def __init__(self, alpha: float = 0.1, rise: float = 1.05):
        self.alpha, self.rise = alpha, rise
        self.seconds_per_request: float | None = None
        self.latency_s: float | None = None
        self._busy_at = 0.0  # busy seconds at the last answer
        self._seconds = self._requests = 0.0  # the two EWMAs

    def answered(self, busy_s: float, requests: int, latency_s: float) -> tuple[float, float] | None:
        """Books a call of ``requests`` answered ``latency_s`` after it arrived, when the
        replica had been busy ``busy_s`` seconds in all. Returns (seconds per request, latency)."""
        if requests > 0:
            spent, self._busy_at = busy_s - self._busy_at, busy_s
            first = self.seconds_per_request is None
            a = 1.0 if first else self.alpha
            self._seconds += a * (spent - self._seconds)
            self._requests += a * (requests - self._requests)
            ratio = self._seconds / self._requests
            if first:
                self.seconds_per_request, self.latency_s = ratio, latency_s
            else:
                self.seconds_per_request = min(ratio, self.seconds_per_request * self.rise)
                self.latency_s = min(latency_s, self.latency_s * self.rise)
        return self.report()

    def report(self) -> tuple[float, float] | None:
        if self.seconds_per_request is None or self.latency_s is None:
            return None
        return self.seconds_per_request, self.latency_s


@ray.remote
class ReplicaActor:
    """One replica. Async: a batch waits on the device while others are received."""

    def __init__(self, cfg: Any, env: WorkerEnv):
        from ray.util.metrics import Counter, Gauge

        self.worker = backend_of(cfg).worker(cfg, env)
        self.is_generator = isinstance(cfg, GeneratorConfig)
        pool = "generator" if self.is_generator else "prm"
        self.replica, self.tags = env.replica, {"pool": pool, "replica": str(env.replica)}
        self.depth = 0  # requests here now
        self.requests = 0  # requests handled (answered or failed)
        self.busy_s = 0.0  # seconds with depth > 0, up to busy_since
        self.busy_since: float | None = None  # monotonic time busy_s was last brought up to date
        self.service = ServiceTime()
        names = {**(GENERATOR_METRICS if self.is_generator else PRM_METRICS), BUSY_METRIC[0]: BUSY_METRIC[1]}
        self.metrics = {n: Counter(n, text, tag_keys=TAGS) for n, text in names.items()}
        self.depth_gauge = Gauge(DEPTH_METRIC[0], DEPTH_METRIC[1], tag_keys=TAGS)

    async def info(self) -> dict[str, Any]:
        return {"replica": self.replica, "num_parameters": self.worker.num_parameters, "pid": os.getpid()}

    async def generate(self, payload: bytes) -> bytes:
        """``payload``: the requests, :func:`encode_batch`; returns (results, queue depth once
        they are out, its speed: :class:`ServiceTime`), encoded the same way."""
        requests, arrived = pickle.loads(payload), time.monotonic()
        self._arrive(len(requests))
        try:
            results = await self.worker.generate(requests)
        finally:
            self._leave(len(requests), arrived)
        self._count(
            treesearch_generator_requests=len(requests),
            treesearch_generated_tokens=sum(r.generated_tokens for r in results),
            treesearch_prompt_tokens=sum(r.prompt_tokens for r in results),
            treesearch_cached_prompt_tokens=sum(r.cached_prompt_tokens for r in results),
        )
        return encode_batch((results, self.depth, self.service.report()))

    async def score(self, payload: bytes) -> bytes:
        requests, arrived = pickle.loads(payload), time.monotonic()
        self._arrive(len(requests))
        try:
            results = await self.worker.score(requests)
        finally:
            self._leave(len(requests), arrived)
        self._count(
            treesearch_prm_requests=sum(len(r.chains) for r in requests),
            treesearch_prm_tokens=sum(sum(r.tokens) for r in results if not r.refused),
        )
        return encode_batch((results, self.depth, self.service.report()))

    async def reset_prefix_cache(self) -> bool:
        """Empties the worker's prefix cache, if it keeps one (vLLM); False if it keeps none."""
        reset = getattr(self.worker, "reset_prefix_cache", None)
        return bool(await reset()) if reset is not None else False

    async def load(self) -> dict[str, Any]:
        """``queue``: requests here now; ``busy_seconds``: seconds with a request here since it
        started, against ``clock`` (this replica's monotonic clock, s): two answers give the
        busy fraction between them; ``requests``: requests handled."""
        self._account()
        return {
            "pid": os.getpid(),
            "queue": self.depth,
            "busy_seconds": self.busy_s,
            "clock": time.monotonic(),
            "requests": self.requests,
            "seconds_per_request": self.service.seconds_per_request,
            "latency_s": self.service.latency_s,
        }

    async def placement(self) -> dict[str, Any]:
        """Where Ray put this replica: node, GPU ids and the ``CUDA_VISIBLE_DEVICES`` its engine
        sees, the resources assigned, its placement group (tensor-parallel replicas)."""
        ctx = ray.get_runtime_context()
        return {
            "node": ctx.get_node_id(),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "assigned": ctx.get_assigned_resources(),
            "placement_group": ctx.get_placement_group_id(),
        }

    def _account(self) -> None:
        """Brings ``busy_s`` (and its counter) up to now; long busy spells are counted as they go."""
        if self.busy_since is None:
            return
        now = time.monotonic()
        spent, self.busy_since = now - self.busy_since, (now if self.depth else None)
        self.busy_s += spent
        if spent > 0:
            self.metrics[BUSY_METRIC[0]].inc(spent, self.tags)

    def _arrive(self, n: int) -> None:
        if not self.depth:
            self.busy_since = time.monotonic()
        self.depth += n
        self.depth_gauge.set(self.depth, self.tags)

    def _leave(self, n: int, arrived: float) -> None:
        self.depth -= n
        self.requests += n
        self._account()
        self.service.answered(self.busy_s, n, time.monotonic() - arrived)
        self.depth_gauge.set(self.depth, self.tags)

    def _count(self, **values: int) -> None:
        for name, value in values.items():
            if value > 0:  # Ray counters accept only positive increments
                self.metrics[name].inc(value, self.tags)
