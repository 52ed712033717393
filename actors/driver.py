"""Runs a job on Ray: the same engine and algorithms, with actor pools as the backends.

``run_on_ray`` validates the models (before any actor or search starts: a missing model dir,
a non-HF dir, a PRM format that does not fit the vocabulary are :class:`ConfigError`), connects
to ``address`` or starts a local Ray instance, starts generator and PRM replicas, waits until
they are up (a replica that cannot start surfaces its cause; unschedulable resources time out
with what was asked and what is free), then runs :func:`treesearch.runner.run_job` with
:class:`GeneratorPool` / :class:`ScorerPool` as the transport.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.placement_group import placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.dispatch import ReplicaPool
from actors.generator import GeneratorActor, GeneratorSpec
from actors.prm import PRMActor, PRMSpec, make_format
from treesearch.backends.deterministic import ByteTokenizer, RulePRM
from treesearch.config import ConfigError, JobConfig, ResourcesConfig
from treesearch.prm import FORMATS, PRMFormatError, count_tokens
from treesearch.protocol import ExpandRequest, ExpandResult, ScoreRequest, ScoreResult
from treesearch.runner import make_task, run_job, select_problems
from treesearch.tasks.game24 import Game24
from treesearch.verifiers import check_checks

GENERATOR_BACKENDS = ("noisy_oracle", "vllm", "hf")
PRM_BACKENDS = ("rule", "mc_rollout", *FORMATS)


# ----------------------------------------------------------------------------- validation
def _check_model_dir(path: str | None, field: str) -> Path:
    if not path:
        raise ConfigError(f"{field}: a model directory is required for this backend")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ConfigError(f"{field}: model directory not found: {p}")
    if not (p / "config.json").is_file():
        raise ConfigError(f"{field}: {p} is not a Hugging Face model directory (no config.json)")
    return p


def _load_tokenizer(path: Path, field: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except Exception as e:
        raise ConfigError(f"{field}: cannot load a tokenizer from {path}: {str(e).splitlines()[0]}") from e


def validate(cfg: JobConfig) -> tuple[Any, Any]:
    """Checks backends and models; returns (generator tokenizer, PRM tokenizer) (None if unused)."""
    g, p = cfg.generator, cfg.prm
    if g.backend not in GENERATOR_BACKENDS:
        raise ConfigError(f"generator.backend: {g.backend!r} is not one of {list(GENERATOR_BACKENDS)}")
    if p.backend not in PRM_BACKENDS:
        raise ConfigError(f"prm.backend: {p.backend!r} is not one of {list(PRM_BACKENDS)}")
    if p.engine not in ("transformers", "vllm"):
        raise ConfigError(f"prm.engine: {p.engine!r} is not one of ['transformers', 'vllm']")
    if p.engine == "vllm" and p.backend != "math_shepherd":
        raise ConfigError(f"prm.engine: vllm serves the math_shepherd format only, not {p.backend}")
    gen_tok = prm_tok = None
    if g.backend != "noisy_oracle":
        gen_tok = _load_tokenizer(_check_model_dir(g.model, "generator.model"), "generator.model")
    task = make_task(cfg)
    if (g.backend == "noisy_oracle" or p.backend == "rule") and not isinstance(task, Game24):
        raise ConfigError("noisy_oracle and the rule PRM support task game24 only")
    try:
        check_checks(task, p.checks)
    except ValueError as e:
        raise ConfigError(f"prm.checks: {e}") from e
    try:  # a missing / empty dataset or a wrong field mapping fails here, before Ray starts
        if not select_problems(task, cfg.run.limit):
            raise ConfigError("task: the selected split holds no problems")
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(f"task: {e}") from e
    if p.backend not in ("rule", "mc_rollout"):
        path = _check_model_dir(p.model, "prm.model")
        prm_tok = _load_tokenizer(path, "prm.model", p.trust_remote_code)
        try:
            FORMATS[p.backend](**p.format_args()).validate(prm_tok)
        except PRMFormatError as e:
            raise ConfigError(f"prm ({p.backend} format): {e}") from e
    return gen_tok, prm_tok


def _spec(spec_cls: type, section: Any, **extra: Any) -> Any:
    """An actor spec from a config section: every field the two share, plus ``extra``."""
    shared = {f.name for f in dataclasses.fields(spec_cls)} & {f.name for f in dataclasses.fields(section)}
    return spec_cls(**{name: getattr(section, name) for name in shared}, **extra)


def generator_spec(cfg: JobConfig) -> GeneratorSpec:
    return _spec(GeneratorSpec, cfg.generator, seed=cfg.run.seed)


def prm_spec(cfg: JobConfig) -> PRMSpec:
    return _spec(PRMSpec, cfg.prm, format_args=cfg.prm.format_args())


# ----------------------------------------------------------------------------- transports
def _pool(handles: list[Any], invoke: Any, res: ResourcesConfig) -> ReplicaPool:
    return ReplicaPool(
        handles,
        invoke,
        key=lambda r: r.problem_id,
        affinity_bound=res.affinity_bound,
        max_batch=res.max_batch,
        max_calls_in_flight=res.max_calls_in_flight,
    )


class GeneratorPool:
    """``treesearch.protocol.Generator`` over generator replicas."""

    def __init__(
        self,
        handles: list[Any],
        tokenizer: Any,
        num_parameters: float,
        res: ResourcesConfig,
        add_special_tokens: bool,
    ):
        self.pool = _pool(handles, lambda h, batch: h.generate.remote(batch), res)
        self.num_parameters = num_parameters
        self._tok, self._special = tokenizer, add_special_tokens

    def tokenize(self, text: str) -> list[int]:
        if isinstance(self._tok, ByteTokenizer):
            return self._tok.encode(text)
        return self._tok.encode(text, add_special_tokens=self._special)

    async def generate(self, requests: list[ExpandRequest]) -> list[ExpandResult]:
        return await self.pool.submit(requests)


class ScorerPool:
    """``treesearch.protocol.Scorer`` over PRM replicas; counts tokens exactly on the driver."""

    def __init__(
        self, handles: list[Any], spec: PRMSpec, tokenizer: Any, num_parameters: float, res: ResourcesConfig
    ):
        self.pool = _pool(handles, lambda h, batch: h.score.remote(batch), res)
        self.num_parameters = num_parameters
        self._rule = RulePRM(Game24(), spec.reachability) if spec.backend == "rule" else None
        self._fmt = None if self._rule else make_format(spec)
        self._tok = tokenizer

    def count_tokens(self, request: ScoreRequest) -> int:
        if self._rule is not None:
            return self._rule.count_tokens(request)
        return count_tokens(self._fmt, self._tok, request.prm_question, request.steps)

    async def score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        return await self.pool.submit(requests)


# ----------------------------------------------------------------------------- actors
def _actor_options(res: ResourcesConfig, tensor_parallel_size: int = 1) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "num_cpus": res.num_cpus,
        "num_gpus": res.num_gpus,
        "max_restarts": res.max_restarts,
        "max_task_retries": 0,  # the dispatcher re-issues, so nothing is counted twice
    }
    if res.custom:  # e.g. {"generator": 1}: land on the pods that advertise it (k8s/)
        opts["resources"] = dict(res.custom)
    if tensor_parallel_size > 1:  # vLLM places its ranks in the group; the shell takes no GPU
        pg = placement_group(
            [{"GPU": res.num_gpus or 1, "CPU": 1}] * tensor_parallel_size, strategy="STRICT_PACK"
        )
        opts.update(
            num_gpus=0,
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                pg, placement_group_capture_child_tasks=True
            ),
        )
    return opts


def _start(
    actor_cls: Any, spec: Any, res: ResourcesConfig, what: str, tp: int = 1
) -> tuple[list[Any], list[dict]]:
    handles = [actor_cls.options(**_actor_options(res, tp)).remote(spec, i) for i in range(res.replicas)]
    try:
        infos = ray.get([h.info.remote() for h in handles], timeout=res.startup_timeout_s)
    except GetTimeoutError as e:
        for h in handles:
            ray.kill(h, no_restart=True)
        asked = {"CPU": res.num_cpus, "GPU": res.num_gpus}
        raise RuntimeError(
            f"{what} replicas did not start within {res.startup_timeout_s:.0f} s: each asks {asked}, "
            f"the cluster has {ray.available_resources()} free"
        ) from e
    except RayActorError as e:
        for h in handles:
            ray.kill(h, no_restart=True)
        raise RuntimeError(f"{what} replica failed to start: {_root_cause(e)}") from e
    return handles, infos


def _root_cause(e: BaseException) -> str:
    lines = [x for x in str(e).splitlines() if x.strip()]
    errors = [x for x in lines if "Error" in x and not x.startswith(" ")]
    return (errors[-1] if errors else lines[-1] if lines else repr(e)).strip()


@dataclass
class Backends:
    generator: GeneratorPool
    scorer: ScorerPool | None  # None for mc_rollout: it rolls out through the generator pool
    generator_handles: list[Any]
    prm_handles: list[Any]

    def dispatch_stats(self) -> dict[str, int]:
        return {
            "generator_routed": self.generator.pool.stats.routed,
            "generator_reissued": self.generator.pool.stats.reissued,
            "prm_reissued": self.scorer.pool.stats.reissued if self.scorer else 0,
            "affinity_hits": self.generator.pool.stats.affinity_hits,
        }

    def shutdown(self) -> None:
        for h in self.generator_handles + self.prm_handles:
            ray.kill(h, no_restart=True)


def start_backends(cfg: JobConfig) -> Backends:
    """Validates, then starts the replicas of both roles (Ray must be initialised)."""
    gen_tok, prm_tok = validate(cfg)
    gspec, pspec = generator_spec(cfg), prm_spec(cfg)
    g_handles, g_infos = _start(
        GeneratorActor, gspec, cfg.generator.resources, "generator", gspec.tensor_parallel_size
    )
    try:
        p_handles, p_infos = _start(PRMActor, pspec, cfg.prm.resources, "PRM")
    except Exception:
        for h in g_handles:
            ray.kill(h, no_restart=True)
        raise
    gen = GeneratorPool(
        g_handles,
        gen_tok or ByteTokenizer(),
        g_infos[0]["num_parameters"],
        cfg.generator.resources,
        cfg.generator.add_special_tokens,
    )
    prm_params = p_infos[0]["num_parameters"] or cfg.prm.num_parameters
    scorer = ScorerPool(p_handles, pspec, prm_tok, prm_params, cfg.prm.resources) if p_handles else None
    return Backends(gen, scorer, g_handles, p_handles)


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
def backends_for(cfg: JobConfig, address: str | None = None) -> Iterator[Backends]:
    """Validated, started replicas for ``cfg`` on Ray (local unless ``address``), shut down on
    exit (with the local Ray instance, if this call started it). Every run inside shares them."""
    validate(cfg)  # fail on bad models before Ray starts
    started = init_ray(address, cfg.run.ray_num_cpus)
    try:
        backends = start_backends(cfg)
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


def run_on_ray(
    cfg: JobConfig, out: Path, address: str | None = None, progress: bool = True, resume: bool = False
) -> dict[str, Any]:
    """Runs ``cfg`` with actor pools on Ray (local unless ``address``); returns the summary."""
    with backends_for(cfg, address) as backends:
        summary = run_job(cfg, out, backends.generator, backends.scorer, progress=progress, resume=resume)
        summary["dispatch"] = backends.dispatch_stats()
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary
