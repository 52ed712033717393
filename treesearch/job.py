"""A job, resolved: what is searched and how, checked once before anything starts.

``resolve(cfg) -> Job`` types the tagged sections (``algorithm``, ``generator``, ``prm``:
:func:`typed_sections`), then checks what the config needs of the world: the task and its
problems, each backend against the task (model dirs, tokenizers, PRM formats the vocabulary
can express), the verifier's checks. What it loads on the way (the generator's tokenizer, the
PRM's) is kept on the :class:`Job`. A Job is data: it starts nothing.

:func:`transports` builds the pair of transports the engine talks to for a job, wherever it
runs: the generator (in this process, or a client of replicas) and the scorer (the PRM in this
process or a client of replicas, times the task checks the config multiplies in). Every plane
uses it (:mod:`treesearch.plane`, :mod:`actors.plane`, :mod:`actors.search_worker`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from treesearch import verifiers
from treesearch.algorithms import Algorithm, parse_algorithm
from treesearch.backends import GENERATORS, PRMS, Backend, WorkerEnv, backend_of, parse_section
from treesearch.backends.hf import PromptTokenizer
from treesearch.config import JobConfig
from treesearch.engine import SearchSpec, make_spec
from treesearch.errors import ConfigError
from treesearch.models import with_embedded_model
from treesearch.preflight import Needs
from treesearch.protocol import Generator, Scorer, TokenCounter
from treesearch.sections import GeneratorConfig, PRMConfig
from treesearch.tasks.base import Problem, Task
from treesearch.tasks.registry import make_task


@dataclass(frozen=True)
class Sections:
    """A config's tagged sections, typed (the embedded models filled in for game24)."""

    algorithm: Algorithm
    algorithm_config: Any
    generator: GeneratorConfig
    prm: PRMConfig


def typed_sections(cfg: JobConfig) -> Sections:
    """Types ``algorithm``, ``generator`` and ``prm``: every key known, every value in range
    (a ConfigError names the field). Needs nothing but the config (``submit`` checks a job
    this way before it reaches the cluster that holds its models)."""
    algorithm, options = parse_algorithm(cfg.algorithm)
    generator = with_embedded_model(cfg.task.name, parse_section(GeneratorConfig, cfg.generator, "generator"))
    prm = with_embedded_model(cfg.task.name, parse_section(PRMConfig, cfg.prm, "prm"))
    return Sections(algorithm, options, generator, prm)


def cluster_needs(sections: Sections) -> Needs:
    """What the job's replicas need of a cluster: the modules their backends import and the
    GPUs all pools ask for together (``submit``'s preflight)."""
    modules: list[str] = []
    gpus = 0.0
    for section, ranks in ((sections.generator, sections.generator.ranks), (sections.prm, 1)):
        backend = backend_of(section)
        modules += [m for m in backend.needs(section) if m not in modules]
        if not backend.engine_side:
            res = section.resources
            gpus += res.replicas * ranks * res.num_gpus
    return Needs(tuple(modules), gpus)


@dataclass
class Job:
    """A validated job (see module docstring).

    Attributes:
      cfg: the config as loaded.
      task, problems: what is searched (``run.limit`` applied).
      algorithm, algorithm_config: the search and its typed options.
      generator_config, prm_config: the typed ``generator:`` / ``prm:`` sections.
      generator_backend, prm_backend: the registered backends they select.
      tokenizer: the generator's prompt tokenizer (``encode(text) -> ids``), engine side.
      prm_loaded: what the PRM backend's check loaded (its tokenizer), for its token counter.
    """

    cfg: JobConfig
    task: Task
    problems: list[Problem]
    algorithm: Algorithm
    algorithm_config: Any
    generator_config: GeneratorConfig
    prm_config: PRMConfig
    generator_backend: Backend
    prm_backend: Backend
    tokenizer: Any = None
    prm_loaded: Any = None

    @property
    def sections(self) -> Sections:
        return Sections(self.algorithm, self.algorithm_config, self.generator_config, self.prm_config)

    @property
    def max_step_tokens(self) -> int:
        return self.generator_config.max_step_tokens

    def to_dict(self) -> dict[str, Any]:
        """The resolved config: every section typed, with its defaults (``config.yaml``)."""
        return {
            **self.cfg.to_dict(),
            "algorithm": {"name": self.algorithm.name, **dataclasses.asdict(self.algorithm_config)},
            "generator": dataclasses.asdict(self.generator_config),
            "prm": dataclasses.asdict(self.prm_config),
        }

    def spec(self, generator: Generator) -> SearchSpec:
        """How the engine searches this job's problems, measured in ``generator``'s tokens."""
        run, shared, options = self.algorithm.run, self.algorithm.shared, self.algorithm_config

        async def search(ctx: Any) -> int | None:
            return await run(ctx, options)

        async def shared_search(ctx: Any, tree: Any) -> None:
            await shared(ctx, options, tree)  # type: ignore[misc]

        return make_spec(self.task, search, generator, self.cfg.budget, self.max_step_tokens,
                         shared_search if shared is not None else None)  # fmt: skip

    def counter(self) -> TokenCounter:
        """The PRM's token counter, for a PRM that runs in replicas."""
        if self.prm_backend.counter is None:
            raise ConfigError(f"prm.backend: {self.prm_backend.name} cannot run in replicas")
        return self.prm_backend.counter(self.prm_config, self.task, self.prm_loaded)

    def worker_env(self, replica: int = -1, generator: Any = None) -> WorkerEnv:
        cfg = self.cfg
        return WorkerEnv(
            replica, cfg.run.seed, self.task, tuple(self.problems), generator, self.max_step_tokens
        )

    @property
    def verifier(self) -> tuple[str, bool]:
        """``(label, is_oracle)``, e.g. ``("math_shepherd x rule", False)``."""
        return verifiers.describe(self.prm_config, self.prm_backend.oracle(self.prm_config))


def resolve(cfg: JobConfig, sections: Sections | None = None) -> Job:
    """Validates ``cfg`` (see module docstring); every failure is a ConfigError naming its field.
    ``sections``: its tagged sections typed already (a search worker gets them from the driver,
    so a backend registered outside ``treesearch`` is found by unpickling its config)."""
    sections = sections if sections is not None else typed_sections(cfg)
    generator, prm = backend_of(sections.generator), backend_of(sections.prm)
    tokenizer = generator.tokenizer(sections.generator) if generator.tokenizer else None
    task = make_task(cfg, tokenizer.tokenizer if isinstance(tokenizer, PromptTokenizer) else None)
    if generator.check is not None:
        generator.check(sections.generator, task)
    prm_loaded = prm.check(sections.prm, task) if prm.check is not None else None
    try:
        verifiers.check_checks(task, sections.prm.checks)
    except ValueError as e:
        raise ConfigError(f"prm.checks: {e}") from e
    try:  # a missing / empty dataset or a wrong field mapping fails here, before anything starts
        problems = task.problems()
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(f"task: {e}") from e
    if cfg.run.limit is not None:
        problems = problems[: cfg.run.limit]
    if not problems:
        raise ConfigError("task: the selected split holds no problems")
    return Job(cfg, task, problems, sections.algorithm, sections.algorithm_config, sections.generator,
               sections.prm, generator, prm, tokenizer, prm_loaded)  # fmt: skip


def transports(
    job: Job, generator: Generator | None = None, replicas: Scorer | None = None,
    problems: Mapping[str, Problem] | None = None,
) -> tuple[Generator, Scorer]:  # fmt: skip
    """The job's transports for the engine: ``generator`` (a client of generator replicas), else
    the generator in this process; ``replicas`` (a client of PRM replicas), else the PRM in this
    process; times the task checks the config multiplies in. ``problems``: the problems the
    checks look up by id (default the job's; a service passes the requests in flight)."""
    if generator is None:
        if not job.generator_backend.in_process:
            local = sorted(n for n, b in GENERATORS.items() if b.in_process)
            raise ConfigError(
                f"generator.backend: {job.generator_backend.name!r} is not an in-process backend "
                f"({', '.join(local)})"
            )
        generator = job.generator_backend.worker(job.generator_config, job.worker_env())
    scorer = replicas
    if scorer is None:
        if not (job.prm_backend.engine_side or job.prm_backend.in_process):
            local = sorted(n for n, b in PRMS.items() if b.in_process or b.engine_side)
            raise ConfigError(
                f"prm.backend: {job.prm_backend.name!r} is not an in-process backend ({', '.join(local)})"
            )
        scorer = job.prm_backend.worker(job.prm_config, job.worker_env(generator=generator))
    try:
        problems = problems if problems is not None else {p.id: p for p in job.problems}
        return generator, verifiers.compose(scorer, job.task, job.prm_config.checks, problems)
    except ValueError as e:
        raise ConfigError(f"prm.checks: {e}") from e
