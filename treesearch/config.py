"""Job configuration, loaded from YAML: unknown keys, wrong types and out-of-range values are
errors at load, one line each, before anything starts.

A job config has these sections::

    task:      {name: game24, split: test, integer_only: false}
    algorithm: {name: beam, width: 4, expansions: 4}     # other keys: the algorithm's config
    generator: {backend: noisy_oracle, error_rate: 0.7}  # other keys: the backend's config
    prm:       {backend: rule}
    budget:    {generated_tokens: 1200}                   # per problem; see treesearch.budget
    run:       {seed: 0, concurrency: 64}

``task``, ``budget`` and ``run`` are typed here (every field and its range is on its dataclass
below). ``algorithm``, ``generator`` and ``prm`` are tagged sections: their ``name`` /
``backend`` picks the class that types the rest, which happens in
:func:`treesearch.job.resolve` (so this module imports no algorithm and no backend).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, Strict

from treesearch.budget import Budget
from treesearch.errors import ConfigError
from treesearch.schema import Auto, Count, Flag, Int, Probability, Text, build, section

NonEmpty = Annotated[str, Strict(), Field(min_length=1)]


@section
class TaskConfig:
    name: Literal["game24", "math"] = "game24"
    split: Literal["train", "dev", "test", "tot_test", "all"] = "test"  # game24's splits
    integer_only: Flag = False  # game24: only puzzles solvable without fractions
    csv_path: Text | None = None  # game24: ToT's 24.csv, for split tot_test
    path: Text | None = None  # math: JSONL / Parquet file, or a saved `datasets` directory
    fields: dict[str, Text] = field(default_factory=dict)  # math: {question, answer, id} -> columns
    system_prompt: Text | None = "Please reason step by step, and put your final answer within \\boxed{}."
    delimiter: NonEmpty = "\n\n"  # math: step delimiter (stop string)
    max_steps: Int(ge=1, le=10_000) = 40  # math: depth limit
    answer_pattern: Text | None = None  # math: regex (group 1) used when no \\boxed{} is found
    chat_template: Text | None = None  # math: Jinja template if the policy model has none


@section
class RunConfig:
    seed: Int(ge=0, le=2**32 - 1) = 0  # job seed: same seed, same trees and results
    concurrency: Count = 64  # problems searched at once per engine (their requests are batched)
    # Ray: processes that run searches. 0: the driver itself; N: N search-worker actors that
    # pull problems from the driver; "auto": one per 20 generator replicas (at least one).
    search_workers: Int(ge=0, le=10_000) | Auto = "auto"
    lease: Count = 8  # problems a worker is handed at a time (work stealing granularity)
    # With fewer problems than search workers, workers share each tree (MCTS: tree-parallel,
    # the tree's `parallel` simulations in flight split among them).
    tree_parallel: Flag = True
    # A job stops (exit 1) once more than this fraction of its problems failed (at least 2):
    # the cause is then not one problem. Failed problems are reported and can be re-run.
    max_failed_fraction: Probability = 0.25
    limit: Count | None = None  # only the first N problems
    save_trees: Flag = True  # write trees/<id>.msgpack
    in_process: Flag = False  # True: no Ray, in-process backends only (noisy_oracle, rule)
    ray_num_cpus: Int(ge=1, le=100_000) | None = None  # local Ray instance size (None: the machine's)


Tagged = dict[str, Any]  # a tagged section as loaded; typed by treesearch.job.resolve


@section
class JobConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    algorithm: Tagged = field(default_factory=lambda: {"name": "beam"})  # name + the algorithm's fields
    generator: Tagged = field(default_factory=dict)  # backend (default noisy_oracle) + its fields
    prm: Tagged = field(default_factory=dict)  # backend (default rule) + its fields
    budget: Budget = field(default_factory=Budget)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **sections: Any) -> JobConfig:
        """A copy with whole sections replaced (checked again)."""
        return dataclasses.replace(self, **sections)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], value parsed as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {text!r}: invalid YAML value: {str(e).splitlines()[0]}") from e
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: typing.Sequence[str]) -> dict[str, Any]:
    """``data`` with each ``key.path=value`` set (sections created as needed)."""
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text!r}: {k} is not a section")
        node[keys[-1]] = value
    return data


def read_yaml_config(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: invalid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    return data


def load_config(path: str | Path | None, overrides: typing.Sequence[str] = ()) -> JobConfig:
    """Loads a YAML job, applies ``--set`` overrides, checks every typed section."""
    data = read_yaml_config(path) if path is not None else {}
    return build(JobConfig, apply_overrides(data, overrides), "")
