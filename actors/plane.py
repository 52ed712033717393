"""The Ray planes: a job's replica pools on a Ray cluster, searched by the engine in this
process (``run.search_workers: 0``) or by search workers (:mod:`actors.fleet`).

:func:`ray_plane` connects to ``address`` or starts a local Ray instance, starts both pools
once (:mod:`actors.replicas`) and polls their load (:mod:`actors.load`); every run inside
shares them (``treesearch compare`` runs a grid of jobs on one plane). On exit the replicas
stop, and the local Ray instance if this call started it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import ray

from actors.clients import GeneratorClient, ScorerClient, dispatch_stats
from actors.fleet import WorkerFleet
from actors.load import LoadMonitor
from actors.replicas import Replicas, clients, init_ray, session_logs, start_replicas
from treesearch.job import Job
from treesearch.plane import LocalPlane, OnRow
from treesearch.results import FailureLimit
from treesearch.tasks.base import Problem

REPLICAS_PER_WORKER = 20  # replicas one search worker keeps busy at 70% of a core (benchmarks: cluster_sim)


def worker_count(job: Job) -> int:
    """``run.search_workers``; ``auto``: one per :data:`REPLICAS_PER_WORKER` generator replicas;
    0 with a job budget (one engine holds it: :mod:`treesearch.job_budget`)."""
    n = job.cfg.run.search_workers
    if job.cfg.budget.scope == "job":
        return 0
    if n == "auto":
        return max(1, math.ceil(job.generator_config.resources.replicas / REPLICAS_PER_WORKER))
    return int(n)


class RayPlane:
    """Started replicas of both pools and this process's clients of them (see module docstring).

    Attributes:
      replicas: the pools' replicas.
      generator, scorer: this process's clients (``scorer`` None when the PRM runs beside the
        engine).
      load: the replicas' load (:meth:`actors.load.LoadMonitor.snapshot`).
      fleet: the search workers of the run in progress (None between runs, or with the engine
        in this process).
    """

    def __init__(
        self,
        replicas: Replicas,
        generator: GeneratorClient,
        scorer: ScorerClient | None,
        load: Callable[[], dict[str, list[dict[str, Any]]]],
    ):
        self.replicas, self.generator, self.scorer, self.load = replicas, generator, scorer, load
        self.local = LocalPlane(
            generator, scorer, lambda: {"dispatch": dispatch_stats(generator, scorer)}, load
        )
        self.fleet: WorkerFleet | None = None

    async def run(
        self, job: Job, problems: Sequence[Problem], on_row: OnRow, failures: FailureLimit
    ) -> dict[str, Any]:
        workers = worker_count(job)
        if workers == 0:  # the engine in this process
            return await self.local.run(job, problems, on_row, failures)
        self.fleet = WorkerFleet(job, self.replicas, workers, job.generator_config.resources.max_restarts)
        try:
            return await self.fleet.run(problems, on_row, failures)
        finally:
            self.fleet.shutdown()
            self.fleet = None


class FleetPlane:
    """Search workers that host the job's in-process backends themselves (no replicas): what a
    worker costs, measured alone (benchmarks)."""

    load = None

    def __init__(self, fleet: WorkerFleet):
        self.fleet = fleet

    async def run(
        self, job: Job, problems: Sequence[Problem], on_row: OnRow, failures: FailureLimit
    ) -> dict[str, Any]:
        return await self.fleet.run(problems, on_row, failures)


@contextlib.contextmanager
def ray_plane(
    job: Job, address: str | None = None, say: Callable[[str], None] | None = None, verbose: bool = False
) -> Iterator[RayPlane]:
    """A :class:`RayPlane` for ``job``'s pools on Ray (local unless ``address``); ``say`` hears
    each replica start; replica logs reach stderr only when ``verbose``."""
    started = init_ray(address, job.cfg.run.ray_num_cpus, verbose)
    if say is not None and not verbose:
        say(f"replica logs (vLLM and others): {session_logs()} (--verbose shows them here)")
    try:
        replicas = start_replicas(job, say)
    except BaseException:
        if started:
            ray.shutdown()
        raise
    try:
        generator, scorer = clients(job, replicas)
        restarts = {
            "generator": job.generator_config.resources.max_restarts,
            "PRM": job.prm_config.resources.max_restarts,
        }
        with LoadMonitor(
            {"generator": replicas.generator, "PRM": replicas.prm}, say=say, max_restarts=restarts
        ) as load:
            yield RayPlane(replicas, generator, scorer, load.snapshot)
    finally:
        replicas.shutdown()
        if started:
            ray.shutdown()
