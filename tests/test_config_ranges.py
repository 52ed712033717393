"""Every option's range is checked at load: each numeric, boolean and enum field of every
section (task, run, budget, every algorithm, every generator and PRM backend and their
resources), given a value out of its range (zero, negative, NaN, huge, a wrong enum or type),
ends ``treesearch run`` with exit 2 and one line naming the field, before any search."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal

import annotated_types as at
import pytest

from treesearch.algorithms import ALGORITHMS
from treesearch.backends import GENERATORS, PRMS
from treesearch.budget import Budget
from treesearch.cli import main
from treesearch.config import RunConfig, TaskConfig
from treesearch.schema import _members, _strip

Case = tuple[str, str, str]  # (--set overrides joined by ";", the field's path, why it is bad)


def _bounds(member: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    for meta in typing.get_args(member)[1:] if typing.get_origin(member) is Annotated else ():
        for m in getattr(meta, "metadata", [meta]):
            for kind in ("ge", "gt", "le", "lt"):
                if isinstance(m, getattr(at, kind.capitalize())):
                    out[kind] = getattr(m, kind)
    return out


Annotated = typing.Annotated


def bad_values(tp: Any) -> list[tuple[str, str]]:
    """YAML values a field of type ``tp`` must refuse, with what each tries."""
    members = _members(tp)
    bases = [_strip(m) for m in members]
    literals = [v for b in bases if typing.get_origin(b) is Literal for v in typing.get_args(b)]
    out = []
    if any(b is bool for b in bases):
        out.append(("maybe", "a string for a boolean"))
    number = next((m for m in members if _strip(m) in (int, float)), None)
    if number is not None:
        kind, b = _strip(number), _bounds(number)
        low, high = b.get("ge", b.get("gt")), b.get("le", b.get("lt"))
        if low is not None:
            out.append((repr(low - 1 if kind is int else low - 1.0), "below its range"))
            if low > 0:
                out.append(("0", "zero"))
        if high is not None:
            out.append((str(int(high) * 10 + 1) if kind is int else repr(high * 10 + 1.0), "huge"))
        if kind is float:
            out.append((".nan", "NaN"))
        out.append(("[1]", "a list for a number"))
        if kind is int and high is not None:
            out.append(("2.5", "a fraction for an integer"))
    elif literals:
        out.append(("not-an-option", "a value of no enum"))
    return out


def _fields(cls: type) -> list[tuple[str, Any]]:
    hints = typing.get_type_hints(cls, include_extras=True)
    return [(f.name, hints[f.name]) for f in dataclasses.fields(cls)]


def cases_of(cls: type, path: str, prefix: list[str]) -> list[Case]:
    out: list[Case] = []
    for name, tp in _fields(cls):
        if dataclasses.is_dataclass(_strip(tp)):
            out += cases_of(_strip(tp), f"{path}.{name}", prefix)
            continue
        for value, why in bad_values(tp):
            out.append((";".join([*prefix, f"{path}.{name}={value}"]), f"{path}.{name}", why))
    return out


def all_cases() -> list[Case]:
    cases = cases_of(TaskConfig, "task", []) + cases_of(RunConfig, "run", []) + cases_of(Budget, "budget", [])
    for name, algo in sorted(ALGORITHMS.items()):
        cases += cases_of(algo.config, "algorithm", [f"algorithm.name={name}"])
    for role, table in (("generator", GENERATORS), ("prm", PRMS)):
        for name, backend in sorted(table.items()):
            cases += cases_of(backend.config, role, [f"{role}.backend={name}"])
    return cases


CASES = all_cases()


def test_the_walk_covers_every_section_and_every_kind_of_bad_value():
    paths = {path for _, path, _ in CASES}
    whys = {why for _, _, why in CASES}
    assert {"task.split", "run.concurrency", "budget.floor", "algorithm.width", "algorithm.c"} <= paths
    assert {"generator.temperature", "generator.resources.replicas", "prm.rollouts", "prm.engine"} <= paths
    assert {"zero", "below its range", "huge", "NaN", "a value of no enum", "a string for a boolean"} <= whys
    assert len(CASES) > 300


@pytest.mark.parametrize("sets", sorted({c[0] for c in CASES}))
def test_an_out_of_range_value_is_one_line_with_exit_2(sets, tmp_path, capsys):
    field = next(path for s, path, _ in CASES if s == sets)
    empty = tmp_path / "empty.yaml"
    empty.write_text("{}\n")
    out = tmp_path / "out"
    args = ["run", str(empty), "--quiet", "--out", str(out), "--set", "run.in_process=true"]
    for s in sets.split(";"):
        args += ["--set", s]
    rc = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, (sets, err)
    assert len(err) == 1 and err[0].startswith(f"error: {field}") and "Traceback" not in err[0], (sets, err)
    assert not out.exists()  # refused before a run dir was written or anything started


def test_the_line_names_the_value_and_the_allowed_range(tmp_path, capsys):
    empty = tmp_path / "empty.yaml"
    empty.write_text("{}\n")
    for sets, line in [
        (
            "algorithm={name: beam, width: -3}",
            "algorithm.width: -3 is not an integer in [1, 1000000] or 'auto'",
        ),
        ("run.concurrency=0", "run.concurrency: 0 is not an integer in [1, 1000000]"),
        ("budget.floor=.nan", "budget.floor: nan is not a finite number in (0, 1]"),
        ("prm.checks=[rule, oracle]", "prm.checks[1]: 'oracle' is not one of 'rule', 'reachability'"),
    ]:
        rc = main(["run", str(empty), "--in-process", "--quiet", "--out", str(tmp_path / "o"), "--set", sets])
        assert rc == 2 and capsys.readouterr().err.strip() == f"error: {line}"
    assert not (tmp_path / "o").exists()
