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
from treesearch.selection import SELECTIONS


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
    max_calls_in_flight: int = 4  # outstanding calls per replica


@dataclass
class GeneratorConfig:
    backend: str = "noisy_oracle"  # noisy_oracle (deterministic) | vllm | hf
    model: str | None = None  # HF model dir (vllm, hf); game24: none = the embedded policy
    error_rate: float = 0.5  # noisy_oracle: probability a proposed step is an error
    max_step_tokens: int = 48  # cap on generated tokens per step (budget worst case)
    num_parameters: float = 1.28e6  # noisy_oracle: nominal size for FLOPs (models: read from weights)
    temperature: float = 1.0
    top_p: float = 1.0
    dtype: str = "auto"  # e.g. float32 on CPU, bfloat16 on GPU
    gpu_memory_utilization: float = 0.9  # vllm: on CPU this fraction of RAM is the KV cache
    enforce_eager: bool = False  # vllm: skip graph capture (start ~15 s instead of 40+ on CPU)
    max_model_len: int | None = None  # vllm
    block_size: int | None = None  # vllm KV block size = prefix-cache granularity (CPU: multiple of 32)
    tensor_parallel_size: int = 1  # vllm: > 1 places ranks with a placement group
    add_special_tokens: bool = True  # tokenizer adds BOS etc. to the prompt
    device: str = "auto"  # hf: auto | cpu | cuda
    latency_s: float = 0.0  # noisy_oracle: simulated seconds per batch call (tests, benchmarks)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)


@dataclass
class PRMConfig:
    backend: str = "rule"  # rule | math_shepherd | qwen_prm | outcome_rm | mc_rollout (ORACLE)
    engine: str = "transformers"  # transformers | vllm (math_shepherd only)
    model: str | None = None  # HF model dir (model backends); game24 math_shepherd: none = embedded PRM
    reachability: bool = True  # rule: also require 24 reachable (an ORACLE: a ceiling)
    # Task checks multiplied into the PRM's step scores (treesearch.verifiers): "rule" (step
    # validity, legitimate) and/or "reachability" (the solver: an ORACLE). [] = the PRM alone.
    checks: list[str] = field(default_factory=list)
    rollouts: int = 4  # mc_rollout: continuations per step (fraction correct: an ORACLE label)
    num_parameters: float = 0.0  # rule: nominal size for FLOPs (models: read from weights)
    step_tag: str | None = None  # math_shepherd: default "ки"
    good_token: str | None = None  # math_shepherd: default "+"
    bad_token: str | None = None  # math_shepherd: default "-"
    separator: str | None = None  # qwen_prm: default "<extra_0>"
    system_prompt: str | None = None  # qwen_prm: default: the model card's
    dtype: str = "auto"
    device: str = "auto"  # transformers: auto | cpu | cuda
    trust_remote_code: bool = False  # e.g. Qwen2.5-Math-PRM's own modelling code
    gpu_memory_utilization: float = 0.9  # vllm
    enforce_eager: bool = False  # vllm
    max_model_len: int | None = None  # vllm
    latency_s: float = 0.0  # rule: simulated seconds per batch call (tests, benchmarks)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)

    def format_args(self) -> dict[str, Any]:
        keys = ("step_tag", "good_token", "bad_token", "separator", "system_prompt")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


@dataclass
class RunConfig:
    seed: int = 0  # job seed: same seed, same trees and results
    concurrency: int = 64  # problems searched at once (their requests are batched)
    limit: int | None = None  # only the first N problems
    save_trees: bool = True  # write trees/<id>.msgpack
    in_process: bool = False  # True: no Ray, in-process backends only (noisy_oracle, rule)
    ray_num_cpus: int | None = None  # local Ray instance size (None: the machine's)


@dataclass
class JobConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    algorithm: dict[str, Any] = field(default_factory=lambda: {"name": "beam"})
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    prm: PRMConfig = field(default_factory=PRMConfig)
    budget: Budget = field(default_factory=Budget)
    run: RunConfig = field(default_factory=RunConfig)

    def algorithm_config(self) -> Any:
        """The algorithm's own typed config, built from ``algorithm`` minus ``name``."""
        params = dict(self.algorithm)
        name = params.pop("name", None)
        if name not in ALGORITHMS:
            raise ConfigError(f"algorithm.name: {name!r} is not one of {sorted(ALGORITHMS)}")
        cfg = build(ALGORITHMS[name].config, params, "algorithm")
        for key in ("selection", "aggregate"):
            value = getattr(cfg, key, None)
            allowed = SELECTIONS if key == "selection" else SELECTIONS[:3]
            if value is not None and value not in allowed:
                raise ConfigError(f"algorithm.{key}: {value!r} is not one of {list(allowed)}")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
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


def build(cls: type, data: dict[str, Any], where: str) -> Any:
    """Builds dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    at = (lambda k: f"{where}.{k}") if where else (lambda k: k)
    for key in data:
        if key not in names:
            raise ConfigError(f"{at(key)}: unknown field (expected one of {', '.join(names)})")
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
