"""Typed job configuration, loaded from YAML. Unknown keys and wrong types are errors.

A job config has these sections (every field is documented on its dataclass below)::

    task:      {name: game24, split: test, integer_only: false}
    algorithm: {name: beam, width: 4, expansions: 4}     # other keys: the algorithm's config
    generator: {backend: noisy_oracle, error_rate: 0.7}
    prm:       {backend: rule}
    budget:    {generated_tokens: 1200}                   # per problem; see treesearch.budget
    run:       {seed: 0, concurrency: 64}
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from treesearch.algorithms import ALGORITHMS
from treesearch.budget import Budget
from treesearch.models import with_embedded_models


class ConfigError(ValueError):
    """A bad config; the message names the field (``section.key: problem``)."""


@dataclass
class TaskConfig:
    name: str = "game24"  # game24 | math
    split: str = "test"  # game24: train | dev | test | tot_test | all
    integer_only: bool = False  # game24: only puzzles solvable without fractions
    csv_path: str | None = None  # game24: ToT's 24.csv, for split tot_test
    path: str | None = None  # math: JSONL / Parquet file, or a saved `datasets` directory
    fields: dict[str, str] = field(default_factory=dict)  # math: {question, answer, id} -> columns
    system_prompt: str | None = "Please reason step by step, and put your final answer within \\boxed{}."
    delimiter: str = "\n\n"  # math: step delimiter (stop string)
    max_steps: int = 40  # math: depth limit
    answer_pattern: str | None = None  # math: regex (group 1) used when no \\boxed{} is found
    chat_template: str | None = None  # math: Jinja template if the policy model has none


@dataclass
class ResourcesConfig:
    """Ray resources of one actor role (generator or PRM)."""

    replicas: int = 1  # actor replicas
    num_cpus: float = 1.0  # per replica
    num_gpus: float = 0.0  # per replica (fractional allowed); with tensor_parallel_size > 1, per rank
    custom: dict[str, float] = field(default_factory=dict)  # Ray custom resources, e.g. {generator: 1}
    max_restarts: int = 3  # Ray restarts a replica that dies, this many times
    startup_timeout_s: float = 600.0  # fail (with the cause) if replicas are not up by then
    affinity_bound: int = 16  # prefix affinity holds while home load <= least load + this
    max_batch: int = 256  # requests per actor call
    max_calls_in_flight: int = 4  # outstanding calls per replica (per search worker)
    # A call not answered by then is re-issued to another replica and its replica restarted
    # (a hang, not a death). None: no deadline.
    request_timeout_s: float | None = None
    max_retries: int = 8  # re-issues of a request after replica losses before its problem fails


@dataclass
class GeneratorConfig:
    """What every generator backend has; each backend's own fields extend it (the ``backend``
    key picks the config class: a tagged union, see :mod:`treesearch.backends`)."""

    backend: str = "noisy_oracle"  # see `treesearch.backends.GENERATORS`
    max_step_tokens: int = 48  # cap on generated tokens per step (budget worst case)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)

    embedded: typing.ClassVar[str | None] = None  # embedded model role it defaults to (game24)

    @property
    def ranks(self) -> int:
        """Processes (and GPUs) one replica spans (tensor parallelism)."""
        return 1


@dataclass
class PRMConfig:
    """What every PRM backend has; each backend's own fields extend it (tagged by ``backend``)."""

    backend: str = "rule"  # see `treesearch.backends.PRMS`
    # Task checks multiplied into the PRM's step scores (treesearch.verifiers): "rule" (step
    # validity, legitimate) and/or "reachability" (the solver: an ORACLE). [] = the PRM alone.
    checks: list[str] = field(default_factory=list)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)

    embedded: typing.ClassVar[str | None] = None


@dataclass
class RunConfig:
    seed: int = 0  # job seed: same seed, same trees and results
    concurrency: int = 64  # problems searched at once per engine (their requests are batched)
    # Ray: processes that run searches. 0: the driver itself; N: N search-worker actors that
    # pull problems from the driver; "auto": one per 64 generator replicas (at least one).
    search_workers: int | typing.Literal["auto"] = "auto"
    lease: int = 8  # problems a worker is handed at a time (work stealing granularity)
    # With fewer problems than search workers, workers share each tree (MCTS: tree-parallel,
    # the tree's `parallel` simulations in flight split among them).
    tree_parallel: bool = True
    # A job stops (exit 1) once more than this fraction of its problems failed (at least 2):
    # the cause is then not one problem. Failed problems are reported and can be re-run.
    max_failed_fraction: float = 0.25
    limit: int | None = None  # only the first N problems
    save_trees: bool = True  # write trees/<id>.msgpack
    in_process: bool = False  # True: no Ray, in-process backends only (noisy_oracle, rule)
    ray_num_cpus: int | None = None  # local Ray instance size (None: the machine's)


@dataclass
class JobConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    algorithm: dict[str, Any] = field(default_factory=lambda: {"name": "beam"})
    generator: GeneratorConfig = field(default_factory=lambda: _variant(GeneratorConfig, {}, "generator"))
    prm: PRMConfig = field(default_factory=lambda: _variant(PRMConfig, {}, "prm"))
    budget: Budget = field(default_factory=Budget)
    run: RunConfig = field(default_factory=RunConfig)

    def algorithm_config(self) -> Any:
        """The algorithm's own typed config, built from ``algorithm`` minus ``name``."""
        params = dict(self.algorithm)
        name = params.pop("name", None)
        if name not in ALGORITHMS:
            raise ConfigError(f"algorithm.name: {name!r} is not one of {sorted(ALGORITHMS)}")
        return build(ALGORITHMS[name].config, params, "algorithm", f"algorithm {name}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _variant(base: type, value: Any, where: str) -> Any:
    """A tagged section (``generator``, ``prm``): the ``backend`` key picks the config class of
    a registered backend, and the rest must be that class's fields."""
    from treesearch.backends import backend_for  # the registry imports this module

    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
    name = value.get("backend", base.backend)
    try:
        cls = backend_for(base, name).config
    except KeyError as e:
        raise ConfigError(f"{where}.backend: {e.args[0]}") from e
    return build(cls, {**value, "backend": name}, where, f"backend {name}")


def _check(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp in (GeneratorConfig, PRMConfig):
        return _variant(tp, value, where)
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed or isinstance(value, bool) != isinstance(allowed[0], bool):
            raise ConfigError(f"{where}: {value!r} is not one of {list(allowed)}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        errors = []
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            try:
                return _check(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return build(tp, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        (item,) = typing.get_args(tp) or (Any,)
        return [_check(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e6 (no sign in the exponent) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def build(cls: type, data: dict[str, Any], where: str, owner: str = "") -> Any:
    """Builds dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types.
    ``owner`` names what the fields belong to in errors (e.g. ``backend vllm``)."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    at = (lambda k: f"{where}.{k}") if where else (lambda k: k)
    for key in data:
        if key not in names:
            of = f" of {owner}" if owner else ""
            raise ConfigError(f"{at(key)}: unknown field{of} (expected one of {', '.join(names)})")
    kwargs = {k: _check(v, hints[k], at(k)) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where or 'config'}: {e}") from e


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], value parsed as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected key=value")
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else None


def load_config(path: str | Path | None, overrides: typing.Sequence[str] = ()) -> JobConfig:
    """Loads a YAML job, applies ``--set`` overrides, validates everything."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: invalid YAML: {str(e).splitlines()[0]}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: expected a mapping at the top level")
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text!r}: {k} is not a section")
        node[keys[-1]] = value
    cfg = with_embedded_models(build(JobConfig, data, ""))
    cfg.algorithm_config()  # validate the algorithm section now, not mid-run
    return cfg
