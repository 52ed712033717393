"""Runs a job on Ray: replicas of both pools, and search workers (or the driver) running the engine.

``run_on_ray`` connects to ``address`` or starts a local Ray instance, starts generator and PRM
replicas (:class:`actors.replica.ReplicaActor`, placed by their resources; a replica that cannot
start surfaces its cause; unschedulable resources time out with what was asked and what is
free), then runs the job's searches on ``run.search_workers`` search workers
(:mod:`actors.fleet`), or in the driver itself with ``search_workers: 0``. The job was
validated once before (:func:`treesearch.job.resolve`); the run dir is written by
:func:`treesearch.runner.run_job` alone.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.fleet import WorkerFleet
from actors.pools import GeneratorPool, ScorerPool, dispatch_stats
from actors.replica import ReplicaActor
from treesearch.backends import WorkerEnv
from treesearch.config import ResourcesConfig
from treesearch.job import Job, engine_scorer
from treesearch.runner import LocalPlane, run_job

REPLICAS_PER_WORKER = 64  # generator replicas one search worker keeps busy (benchmarks/README.md)


# ----------------------------------------------------------------------------- replicas
def actor_options(res: ResourcesConfig, ranks: int = 1) -> dict[str, Any]:
    """Ray options of one replica: its share of CPUs / GPUs, restarts, custom resources; a
    replica of several ranks (tensor parallelism) gets a placement group of one bundle per
    rank on one node, and the shell itself takes no GPU."""
    opts: dict[str, Any] = {
        "num_cpus": res.num_cpus,
        "num_gpus": res.num_gpus,
        "max_restarts": res.max_restarts,
        "max_task_retries": 0,  # the dispatcher re-issues, so nothing is counted twice
    }
    if res.custom:  # e.g. {"generator": 1}: land on the pods that advertise it (k8s/)
        opts["resources"] = dict(res.custom)
    if ranks > 1:  # vLLM places its ranks in the group
        pg = placement_group([{"GPU": res.num_gpus or 1, "CPU": 1}] * ranks, strategy="STRICT_PACK")
        opts.update(
            num_gpus=0,
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                pg, placement_group_capture_child_tasks=True
            ),
        )
    return opts


def _root_cause(e: BaseException) -> str:
    lines = [x for x in str(e).splitlines() if x.strip()]
    errors = [x for x in lines if "Error" in x and not x.startswith(" ")]
    return (errors[-1] if errors else lines[-1] if lines else repr(e)).strip()


@dataclass
class Pool:
    """A pool's replicas (their handles, what they reported at start, their placement groups)."""

    handles: list[Any]
    infos: list[dict]
    groups: list[Any]

    def stop(self) -> None:
        stop(self.handles, self.groups)


def stop(handles: list[Any], groups: list[Any]) -> None:
    """Kills replicas (no restart) and frees their placement groups."""
    for h in handles:
        ray.kill(h, no_restart=True)
    for g in groups:
        remove_placement_group(g)


def _free() -> dict[str, float]:
    """The cluster's free resources, without Ray's per-placement-group bookkeeping entries."""
    return {
        k: v for k, v in ray.available_resources().items() if "_group_" not in k and not k.startswith("node:")
    }


def start_pool(cfg: Any, seed: int, what: str) -> Pool:
    """``resources.replicas`` replicas of the backend ``cfg`` selects, up and answering."""
    res: ResourcesConfig = cfg.resources
    ranks = cfg.ranks if what == "generator" else 1
    handles, groups = [], []
    for i in range(res.replicas):  # a replica of several ranks gets a placement group of its own
        opts = actor_options(res, ranks)
        if "scheduling_strategy" in opts:
            groups.append(opts["scheduling_strategy"].placement_group)
        handles.append(ReplicaActor.options(**opts).remote(cfg, WorkerEnv(i, seed)))
    try:
        infos = ray.get([h.info.remote() for h in handles], timeout=res.startup_timeout_s)
    except GetTimeoutError as e:
        free = _free()
        stop(handles, groups)
        asked = {"CPU": res.num_cpus, "GPU": res.num_gpus * (ranks if ranks > 1 else 1), **res.custom}
        raise RuntimeError(
            f"{what} replicas did not start within {res.startup_timeout_s:.0f} s: each asks {asked}"
            + (f" on one node ({ranks} ranks)" if ranks > 1 else "")
            + f", the cluster has {free} free"
        ) from e
    except RayActorError as e:
        stop(handles, groups)
        raise RuntimeError(f"{what} replica failed to start: {_root_cause(e)}") from e
    return Pool(handles, infos, groups)


def check_placement(res: ResourcesConfig, ranks: int, placements: list[dict[str, Any]]) -> list[str]:
    """What is wrong with where Ray put a pool's replicas (``ReplicaActor.placement``): each must
    hold the GPU share it asked for, see exactly the GPUs Ray assigned it, and a replica of
    several ranks must sit in a placement group (its ranks' bundles on one node). Empty: all
    as asked."""
    problems = []
    for i, p in enumerate(placements):
        gpu = p["assigned"].get("GPU", 0.0)
        asked = 0.0 if ranks > 1 else res.num_gpus
        if abs(gpu - asked) > 1e-9:
            problems.append(f"replica {i}: holds {gpu} GPU, asked {asked}")
        visible = p["cuda_visible_devices"]
        if asked > 0 and (visible or "").split(",") != p["gpu_ids"]:
            problems.append(f"replica {i}: CUDA_VISIBLE_DEVICES={visible!r}, assigned GPUs {p['gpu_ids']}")
        if ranks > 1 and not p["placement_group"]:
            problems.append(f"replica {i}: {ranks} ranks but no placement group")
        if asked > 0 and len(p["gpu_ids"]) != max(1, math.ceil(asked)):
            problems.append(f"replica {i}: {len(p['gpu_ids'])} GPU ids for a share of {asked}")
    return problems


@dataclass
class Replicas:
    """The running replicas of a job (picklable: search workers get it)."""

    generator: list[Any]
    prm: list[Any]  # empty when the PRM runs beside the engine (Monte-Carlo rollouts)
    generator_parameters: float
    prm_parameters: float
    groups: list[Any] = field(default_factory=list)  # placement groups (tensor-parallel replicas)

    def shutdown(self) -> None:
        stop(self.generator + self.prm, self.groups)


def start_replicas(job: Job) -> Replicas:
    """Starts both pools (Ray must be initialised)."""
    cfg = job.cfg
    gen = start_pool(cfg.generator, cfg.run.seed, "generator")
    prm = Pool([], [{"num_parameters": 0.0}], [])
    if not job.prm.engine_side:
        try:
            prm = start_pool(cfg.prm, cfg.run.seed, "PRM")
        except Exception:
            gen.stop()
            raise
    return Replicas(
        gen.handles, prm.handles, gen.infos[0]["num_parameters"], prm.infos[0]["num_parameters"], gen.groups
    )


def transports(job: Job, replicas: Replicas) -> tuple[GeneratorPool, ScorerPool | None]:
    """This process's transports to every replica of both pools."""
    cfg = job.cfg
    gen = GeneratorPool(
        replicas.generator, job.tokenizer, replicas.generator_parameters, cfg.generator.resources
    )
    if not replicas.prm:
        return gen, None
    return gen, ScorerPool(replicas.prm, job.counter(), replicas.prm_parameters, cfg.prm.resources)


@dataclass
class Backends:
    """Started replicas and this process's transports to them."""

    replicas: Replicas
    generator: GeneratorPool
    scorer: ScorerPool | None

    def dispatch_stats(self) -> dict[str, Any]:
        return {"dispatch": dispatch_stats(self.generator, self.scorer)}

    def shutdown(self) -> None:
        self.replicas.shutdown()


def start_backends(job: Job) -> Backends:
    replicas = start_replicas(job)
    return Backends(replicas, *transports(job, replicas))


# ----------------------------------------------------------------------------- ray, runs
def init_ray(address: str | None, num_cpus: int | None) -> bool:
    """Connects to ``address``, or starts a local Ray; True if this call started it. Actor logs
    reach the driver's stderr, so an engine's own start-up error shows above our summary of it."""
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address)
    else:
        ray.init(
            address="local",  # never a stray cluster
            num_cpus=num_cpus,
            include_dashboard=False,
            # vLLM's per-engine INFO lines drown the progress line; warnings and errors still show
            runtime_env={"env_vars": {"VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")}},
        )
    return True


@contextlib.contextmanager
def backends_for(job: Job, address: str | None = None) -> Iterator[Backends]:
    """Started replicas for ``job`` on Ray (local unless ``address``), shut down on exit (with
    the local Ray instance, if this call started it). Every run inside shares them."""
    started = init_ray(address, job.cfg.run.ray_num_cpus)
    try:
        backends = start_backends(job)
    except Exception:
        if started:
            ray.shutdown()
        raise
    try:
        yield backends
    finally:
        backends.shutdown()
        if started:
            ray.shutdown()


def worker_count(job: Job) -> int:
    """``run.search_workers``; ``auto``: one per :data:`REPLICAS_PER_WORKER` generator replicas."""
    n = job.cfg.run.search_workers
    if n == "auto":
        return max(1, math.ceil(job.cfg.generator.resources.replicas / REPLICAS_PER_WORKER))
    return int(n)


def run_on_ray(
    job: Job,
    out: Path,
    address: str | None = None,
    progress: bool = True,
    resume: bool = False,
    retry_failed: bool = False,
) -> dict[str, Any]:
    """Runs ``job`` with replica pools on Ray (local unless ``address``); returns the summary."""
    with backends_for(job, address) as b:
        workers = worker_count(job)
        if workers == 0:  # the engine in this process
            plane: Any = LocalPlane(job, b.generator, engine_scorer(job, b.generator, b.scorer))
            return run_job(job, out, progress=progress, resume=resume, retry_failed=retry_failed, plane=plane,
                           extra=b.dispatch_stats)  # fmt: skip
        fleet = WorkerFleet(job, b.replicas, workers, job.cfg.generator.resources.max_restarts)
        try:
            return run_job(job, out, progress=progress, resume=resume, retry_failed=retry_failed, plane=fleet)
        finally:
            fleet.shutdown()
