"""The replicas of a job's two pools on Ray: started, waited for, stopped, and the engine's
clients to them.

:func:`start_replicas` starts the generator and PRM pools at once (:class:`ReplicaActor`,
placed by their resources; a replica that cannot start surfaces its cause; unschedulable
resources time out with what was asked and what is free); :func:`clients` builds a process's
transports to them. Search workers get :class:`Replicas` (picklable) and build their own.
"""

from __future__ import annotations

import logging
import math
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.clients import GeneratorClient, ScorerClient
from actors.replica import ReplicaActor
from treesearch.backends import WorkerEnv
from treesearch.job import Job
from treesearch.models import EMBEDDED_DIR
from treesearch.sections import ResourcesConfig

REPLICA_PREFIX = "treesearch/"  # replica actor names: treesearch/<pool>/<index>/<suffix>


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
    """One role's replicas (the generator pool, the PRM pool): their handles, what they
    reported at start, their placement groups."""

    handles: list[Any]
    infos: list[dict]
    groups: list[Any]
    what: str = ""
    cfg: Any = None

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


def launch_pool(cfg: Any, seed: int, what: str) -> Pool:
    """Creates ``resources.replicas`` replicas of the backend ``cfg`` selects (not waited for)."""
    res: ResourcesConfig = cfg.resources
    ranks = cfg.ranks if what == "generator" else 1
    handles, groups = [], []
    for i in range(res.replicas):  # a replica of several ranks gets a placement group of its own
        opts = actor_options(res, ranks)
        if "scheduling_strategy" in opts:
            groups.append(opts["scheduling_strategy"].placement_group)
        # a name operators (and benchmarks/chaos.py) can find in `ray list actors`; the suffix
        # keeps two pools of one namespace (a compare, a test module) apart
        opts["name"] = f"{REPLICA_PREFIX}{what}/{i}/{uuid.uuid4().hex[:8]}"
        handles.append(ReplicaActor.options(**opts).remote(cfg, WorkerEnv(i, seed)))
    return Pool(handles, [], groups, what, cfg)


def wait_pools(pools: list[Pool], say: Callable[[str], None] | None = None) -> None:
    """Waits until every replica of ``pools`` answers, saying each one's start as it comes
    (``say``); pools start at once. A replica that cannot start stops them all with its cause,
    or, past its pool's ``startup_timeout_s``, with what it asked for and what is free. A replica
    killed while it starts (Ray restarts it) is waited for again, within the same deadline."""
    t0 = time.perf_counter()
    pending = {h.info.remote(): (p, i) for p in pools for i, h in enumerate(p.handles)}
    for p in pools:
        p.infos = [{}] * len(p.handles)
        if say is not None:
            say(f"{p.what}: starting {len(p.handles)} replica(s) ({describe_backend(p.cfg)})")
    try:
        while pending:
            # each pool keeps its own deadline: the soonest one among those still starting
            p = min((pending[r][0] for r in pending), key=lambda q: q.cfg.resources.startup_timeout_s)
            res = p.cfg.resources
            left = res.startup_timeout_s - (time.perf_counter() - t0)
            done, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, left))
            if not done:
                ranks = p.cfg.ranks if p.what == "generator" else 1
                asked = {"CPU": res.num_cpus, "GPU": res.num_gpus * (ranks if ranks > 1 else 1), **res.custom}
                raise RuntimeError(
                    f"{p.what} replicas did not start within {res.startup_timeout_s:.0f} s: each asks {asked}"
                    + (f" on one node ({ranks} ranks)" if ranks > 1 else "")
                    + f", the cluster has {_free()} free"
                )
            ref = done[0]
            p, i = pending[ref]
            try:
                p.infos[i] = ray.get(ref)  # raises for a replica that failed to start: named below
            except ActorUnavailableError:  # it died while starting and Ray is restarting it: ask again
                del pending[ref]
                pending[p.handles[i].info.remote()] = (p, i)
                continue
            del pending[ref]
            if say is not None:
                took = time.perf_counter() - t0
                say(f"{p.what} {i + 1}/{len(p.handles)} ({describe_backend(p.cfg)}) ready in {took:.0f} s")
    except RayActorError as e:
        for p in pools:
            p.stop()
        raise RuntimeError(f"{pending[ref][0].what} replica failed to start: {_root_cause(e)}") from e
    except BaseException:
        for p in pools:
            p.stop()
        raise


def start_pool(cfg: Any, seed: int, what: str) -> Pool:
    """``resources.replicas`` replicas of the backend ``cfg`` selects, up and answering."""
    pool = launch_pool(cfg, seed, what)
    wait_pools([pool])
    return pool


def describe_backend(cfg: Any) -> str:
    """``vllm, embedded policy`` / ``math_shepherd on vllm, /models/prm``: what a pool runs."""
    fields = vars(cfg)  # only model-backed sections have a model and an engine
    model, engine = fields.get("model"), fields.get("engine")
    where = ""
    if model:
        where = f", embedded {Path(model).name}" if Path(model).parent == EMBEDDED_DIR else f", {model}"
    return f"{cfg.backend}{f' on {engine}' if engine and engine != 'transformers' else ''}{where}"


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


def start_replicas(job: Job, say: Callable[[str], None] | None = None) -> Replicas:
    """Starts both pools at once (Ray must be initialised); ``say`` hears each replica start."""
    seed = job.cfg.run.seed
    gen = launch_pool(job.generator_config, seed, "generator")
    pools = [gen]
    prm = Pool([], [{"num_parameters": 0.0}], [])
    if not job.prm_backend.engine_side:
        prm = launch_pool(job.prm_config, seed, "PRM")
        pools.append(prm)
    wait_pools(pools, say)
    return Replicas(
        gen.handles, prm.handles, gen.infos[0]["num_parameters"], prm.infos[0]["num_parameters"], gen.groups
    )


def clients(job: Job, replicas: Replicas) -> tuple[GeneratorClient, ScorerClient | None]:
    """This process's clients of every replica of both pools (no PRM client when the PRM runs
    beside the engine); :func:`treesearch.job.transports` makes the engine's transports of them."""
    gen = GeneratorClient(
        replicas.generator, job.tokenizer, replicas.generator_parameters, job.generator_config.resources
    )
    if not replicas.prm:
        return gen, None
    return gen, ScorerClient(replicas.prm, job.counter(), replicas.prm_parameters, job.prm_config.resources)


def init_ray(address: str | None, num_cpus: int | None, verbose: bool = False) -> bool:
    """Connects to ``address``, or starts a local Ray; True if this call started it. Replica
    logs (vLLM, Triton, NUMA lines) stay in Ray's session log files unless ``verbose``; a
    replica that fails to start still surfaces its cause (its exception carries it)."""
    if ray.is_initialized():
        return False
    # Ray's own INFO / WARNING lines in this process ("Started a local Ray instance", token-auth
    # notes) are not ours to print unless asked; its errors still show
    quiet = {"log_to_driver": verbose, "logging_level": logging.INFO if verbose else logging.ERROR}
    if address:
        ray.init(address=address, **quiet)
    else:
        ray.init(
            address="local",  # never a stray cluster
            num_cpus=num_cpus,
            include_dashboard=False,
            **quiet,
            # vLLM's per-engine INFO lines drown the progress line; warnings and errors still show
            runtime_env={"env_vars": {"VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")}},
        )
    if not verbose:
        _quiet_raylet_errors()
    return True


def _quiet_raylet_errors() -> None:
    """Ray prints its own paragraph on the driver's terminal when a worker dies (a replica killed,
    ~900 characters); the load monitor says it in one line of ours instead
    (:class:`actors.load.LoadMonitor`). Ray has no switch for it: its error listener prints
    through this module-level function, wrapped here to drop the raylet's messages (they stay in
    the session logs)."""
    import ray._private.worker as ray_worker

    if getattr(ray_worker.print_to_stdstream, "treesearch_quiet", False):
        return
    printer = ray_worker.print_to_stdstream

    def quiet(data: dict[str, Any], ignore_prefix: bool) -> None:
        if data.get("pid") != "raylet":
            printer(data, ignore_prefix)

    quiet.treesearch_quiet = True  # type: ignore[attr-defined]
    ray_worker.print_to_stdstream = quiet


def session_logs() -> str:
    """Where this Ray session keeps its processes' logs (on the head node)."""
    from ray._private.worker import global_worker  # no public API names the session dir

    node = getattr(global_worker, "node", None)
    return str(Path(node.get_session_dir_path()) / "logs") if node is not None else "Ray's session dir"
