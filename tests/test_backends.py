"""The backend registry: every config field reaches its backend, and a new backend is one file
plus its registration (here: a PRM defined in this test, run end to end)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import sys
from collections.abc import Sequence

import pytest

from treesearch.backends import GENERATORS, PRMS, Backend, WorkerEnv, register
from treesearch.backends.deterministic import ByteCounter, game24_only
from treesearch.config import load_config
from treesearch.errors import ConfigError
from treesearch.job import typed_sections
from treesearch.protocol import ScoreRequest, ScoreResult
from treesearch.schema import Float, section
from treesearch.sections import GeneratorConfig, PRMConfig

from .helpers import run_local

# handled for every backend by the engine and the actors, not by a backend's own code
COMMON = {f.name for f in dataclasses.fields(GeneratorConfig)} | {
    f.name for f in dataclasses.fields(PRMConfig)
}


def _attributes_read(modules: set[str]) -> set[str]:
    names = set()
    for name in modules:
        tree = ast.parse(inspect.getsource(sys.modules[name]))
        names |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    return names


def _modules_of(backend: Backend) -> set[str]:
    parts = [backend.config, backend.worker, backend.check, backend.tokenizer, backend.counter]
    mods = {inspect.getmodule(p).__name__ for p in parts if p is not None and inspect.getmodule(p)}
    return mods | {backend.config.__module__}


@pytest.mark.parametrize("backend", [*GENERATORS.values(), *PRMS.values()], ids=lambda b: b.name)
def test_every_config_field_is_read_by_its_backend(backend: Backend):
    fields = {f.name for f in dataclasses.fields(backend.config)} - COMMON
    read = _attributes_read(_modules_of(backend))
    unread = sorted(f for f in fields if f not in read)
    assert not unread, f"{backend.name}: config fields no backend code reads: {unread}"


def test_the_field_check_fails_for_a_field_that_reaches_nothing():
    @section
    class Leaky(PRMConfig):
        threshold_that_goes_nowhere: float = 0.5

    fake = Backend("leaky", Leaky, worker=lambda cfg, env: None)
    fields = {f.name for f in dataclasses.fields(fake.config)} - COMMON
    assert fields - _attributes_read(_modules_of(fake)) == {"threshold_that_goes_nowhere"}


def test_deterministic_backends_get_their_config_values():
    cfg = load_config(
        None, ["generator={backend: noisy_oracle, error_rate: 0.2, num_parameters: 7.0, latency_s: 0.01}"]
    )
    worker = GENERATORS["noisy_oracle"].worker(typed_sections(cfg).generator, WorkerEnv(replica=3, seed=5))
    assert (worker.error_rate, worker.num_parameters, worker.latency_s, worker.replica, worker.seed) == (
        0.2, 7.0, 0.01, 3, 5
    )  # fmt: skip
    cfg = load_config(
        None, ["prm={backend: rule, reachability: false, num_parameters: 3.0, latency_s: 0.02}"]
    )
    prm = PRMS["rule"].worker(typed_sections(cfg).prm, WorkerEnv())
    assert (prm.reachability, prm.num_parameters, prm.latency_s) == (False, 3.0, 0.02)


# ---- a new backend: one class, one config, one registration
class ConstantPRM:
    """Scores every step with a constant (a stand-in for a new PRM backend)."""

    def __init__(self, value: float):
        self.value, self.num_parameters, self.counter = value, 0.0, ByteCounter("\n")

    async def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        return [
            ScoreResult(tuple((self.value,) * len(c) for c in r.chains), tuple(len(c) for c in r.chains))
            for r in requests
        ]


@section
class ConstantConfig(PRMConfig):
    value: Float(ge=0, le=1) = 0.5  # the score of every step


if "constant" not in PRMS:
    register(
        Backend(
            "constant",
            ConstantConfig,
            worker=lambda cfg, env: ConstantPRM(cfg.value),
            check=game24_only,
            counter=lambda cfg, task, loaded: ByteCounter("\n"),
            in_process=True,
        )
    )


def test_a_new_backend_is_one_file_and_its_registration(tmp_path):
    cfg = load_config(None, ["prm={backend: constant, value: 0.25}", "run.limit=3", "run.in_process=true"])
    summary = run_local(cfg, tmp_path)
    assert summary["verifier"] == "constant" and summary["n_problems"] == 3
    from treesearch.tree import Tree

    for f in (tmp_path / "trees").iterdir():
        tree = Tree.from_msgpack(f.read_bytes())
        scored = [s for s in tree.prm_score[1:] if s == s]
        assert scored and set(scored) == {0.25}
    with pytest.raises(ConfigError, match=r"prm\.valeu: unknown field of backend constant"):
        typed_sections(load_config(None, ["prm={backend: constant, valeu: 0.25}"]))
    with pytest.raises(ConfigError, match=r"prm\.value: 1.5 is not a finite number in \[0, 1\]"):
        typed_sections(load_config(None, ["prm={backend: constant, value: 1.5}"]))
