"""The backend registry: every generator and PRM backend, under its name, with its typed config.

A backend is one file that defines its config (a :class:`treesearch.sections.GeneratorConfig`
or :class:`treesearch.sections.PRMConfig` subclass: the fields a ``generator:`` / ``prm:``
section may hold when it names the backend), its worker (what runs in a replica, or in the
engine's process; it imports no Ray), and registers a :class:`Backend` here. The config
object itself is what the worker receives, so no field can get lost on the way.

Two kinds of workers:

* a **generator** worker: ``num_parameters`` and ``async generate(requests)``;
* a **PRM** worker: ``num_parameters``, ``counter`` (only needed in the engine's process)
  and ``async score(requests)``.

What the engine's process needs beside the workers (built once, after validation):
``tokenizer(cfg)`` for a generator (the problem prompt's token ids) and ``counter(cfg)`` for a
PRM (cheap PRM-token upper bounds, :class:`treesearch.protocol.TokenCounter`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from treesearch.errors import ConfigError
from treesearch.schema import build
from treesearch.sections import GeneratorConfig, PRMConfig


@dataclass(frozen=True)
class WorkerEnv:
    """What a worker may need besides its config.

    Attributes:
      replica: the replica's index (-1 in the engine's own process).
      seed: the job seed.
      task, problems: the job's task and problems (task-specific backends).
      generator: the job's generator transport (backends that generate, e.g. rollouts).
      max_step_tokens: the generator's cap on tokens per step.
    """

    replica: int = -1
    seed: int = 0
    task: Any = None
    problems: tuple = ()
    generator: Any = None
    max_step_tokens: int = 48


@dataclass(frozen=True)
class Backend:
    """A registered backend.

    Attributes:
      name: the ``backend:`` value that selects it.
      config: its config class (every field it accepts, documented there).
      worker: ``worker(cfg, env) -> worker`` (see module docstring); imports heavy
        dependencies lazily.
      check: ``check(cfg, task) -> None``: raises :class:`treesearch.errors.ConfigError` for a
        config that cannot work (a missing model dir, a format the vocabulary cannot express),
        before any replica starts. Returns what it loaded, if anything (a tokenizer).
      tokenizer: generators: ``tokenizer(cfg) -> object with encode(text) -> list[int]``.
      counter: PRMs served by replicas: ``counter(cfg, task, loaded) -> TokenCounter``, where
        ``loaded`` is what ``check`` returned (the PRM's tokenizer).
      in_process: the worker is cheap and deterministic enough to run in the engine's own
        process (``--in-process``, tests, in-worker benchmarks).
      engine_side: the worker always runs in the engine's process, also on Ray (it drives
        the generator pool itself: Monte-Carlo rollouts), never as a replica.
      oracle: ``oracle(cfg) -> bool``: it reads the ground truth (reported in every summary
        as a ceiling).
      needs: ``needs(cfg) -> module names`` its worker imports beyond treesearch's own
        dependencies (``submit``'s preflight asks the cluster's Python for them).
    """

    name: str
    config: type
    worker: Callable[[Any, WorkerEnv], Any]
    check: Callable[[Any, Any], Any] | None = None
    tokenizer: Callable[[Any], Any] | None = None
    counter: Callable[[Any, Any, Any], Any] | None = None
    in_process: bool = False
    engine_side: bool = False
    oracle: Callable[[Any], bool] = lambda cfg: False
    needs: Callable[[Any], tuple[str, ...]] = lambda cfg: ()


GENERATORS: dict[str, Backend] = {}
PRMS: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    """Adds ``backend`` to the registry of its role (by its config's base class)."""
    table = GENERATORS if issubclass(backend.config, GeneratorConfig) else PRMS
    if not issubclass(backend.config, GeneratorConfig | PRMConfig):
        raise TypeError(f"{backend.name}: config must extend GeneratorConfig or PRMConfig")
    if backend.name in table:
        raise ValueError(f"backend {backend.name!r} registered twice")
    table[backend.name] = backend
    return backend


def backend_for(base: type, name: str) -> Backend:
    """The registered backend ``name`` of the role ``base`` names; KeyError with the choices."""
    table = GENERATORS if base is GeneratorConfig else PRMS
    if name not in table:
        raise KeyError(f"{name!r} is not one of {sorted(table)}")
    return table[name]


def backend_of(section: GeneratorConfig | PRMConfig) -> Backend:
    """The registered backend a typed ``generator:`` / ``prm:`` section selects."""
    role = GeneratorConfig if isinstance(section, GeneratorConfig) else PRMConfig
    return backend_for(role, section.backend)


def parse_section(base: type, data: dict[str, Any], where: str) -> Any:
    """A ``generator:`` / ``prm:`` mapping (``base`` says which) as its backend's typed config:
    ``backend`` picks the class (a tagged section), the rest must be its fields, in range."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    name = data.get("backend", base.backend)
    try:
        cls = backend_for(base, name).config
    except KeyError as e:
        raise ConfigError(f"{where}.backend: {e.args[0]}") from e
    return build(cls, {**data, "backend": name}, where, f"backend {name}")
