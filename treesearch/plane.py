"""Where a job's searches run: a :class:`Plane`.

A plane is started once (a context manager: local engine, Ray with the engine in the driver,
Ray with search workers, a service's warm pools) and runs one job or many on what it
started. It streams each finished problem to the caller as ``(results row, tree bytes)``; the
run dir, the progress line and the summary are written by :func:`treesearch.runner.run_job`,
which knows nothing of where the plane runs. This module holds the protocol and the plane
without Ray: the engine in this process (:class:`LocalPlane`); the Ray planes are in
:mod:`actors.plane`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from treesearch.engine import EngineOptions, run_problems
from treesearch.job import Job, transports
from treesearch.protocol import Generator, Scorer
from treesearch.results import FailureLimit, ProblemResult
from treesearch.tasks.base import Problem
from treesearch.tree import Tree

OnRow = Callable[[dict[str, Any], bytes | None], None]  # (results row, tree msgpack bytes or None)
Load = Callable[[], dict[str, list[dict[str, Any]]]]  # each pool's replicas' load


class Plane(Protocol):
    """Where searches run (see module docstring).

    Attributes:
      load: the replicas' load for the progress line and ``status.json`` (None: no replicas).
    """

    load: Load | None

    async def run(
        self, job: Job, problems: Sequence[Problem], on_row: OnRow, failures: FailureLimit
    ) -> dict[str, Any]:
        """Searches every problem once, streaming each to ``on_row``; returns counters for the
        summary."""
        ...


class LocalPlane:
    """The engine in this process, over the given transports to replicas (``generator``,
    ``replicas``: clients of the generator and PRM pools), else the job's in-process backends.
    ``extra()`` adds to each run's counters (e.g. the clients' dispatch counters)."""

    def __init__(
        self,
        generator: Generator | None = None,
        replicas: Scorer | None = None,
        extra: Callable[[], dict[str, Any]] | None = None,
        load: Load | None = None,
    ):
        self.generator, self.replicas, self.extra, self.load = generator, replicas, extra, load

    async def run(
        self, job: Job, problems: Sequence[Problem], on_row: OnRow, failures: FailureLimit
    ) -> dict[str, Any]:
        generator, scorer = transports(job, self.generator, self.replicas)
        save_trees = job.cfg.run.save_trees

        def done(result: ProblemResult, tree: Tree) -> None:
            on_row(result.to_json(), tree.to_msgpack() if save_trees else None)

        options = EngineOptions(concurrency=job.cfg.run.concurrency)
        _, _, counters = await run_problems(list(problems), job.spec(generator), generator, scorer, options,
                                            done, failures)  # fmt: skip
        return {**counters.to_dict(), **(self.extra() if self.extra else {})}
