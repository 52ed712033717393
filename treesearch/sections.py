"""The bases of the ``generator:`` and ``prm:`` sections, and the Ray resources of a pool.

Each backend's config extends :class:`GeneratorConfig` or :class:`PRMConfig` with its own fields
(:mod:`treesearch.backends`); the ``backend`` key picks the class when a job is resolved. A leaf
module: backends import it, and it imports no backend.
"""

from __future__ import annotations

import typing
from dataclasses import field
from typing import Literal

from treesearch.schema import MAX_COUNT, Count, Float, Int, Seconds, Text, section

CHECKS = ("rule", "reachability")  # task checks a PRM's scores can be multiplied by (verifiers)


@section
class ResourcesConfig:
    """Ray resources and fault limits of one pool (the generator's or the PRM's replicas)."""

    replicas: Count = 1  # actor replicas
    num_cpus: Float(ge=0, le=10_000) = 1.0  # per replica
    num_gpus: Float(ge=0, le=10_000) = 0.0  # per replica (fractional allowed); tensor parallel: per rank
    custom: dict[str, Float(ge=0)] = field(default_factory=dict)  # Ray custom resources, e.g. {generator: 1}
    max_restarts: Int(ge=-1, le=1000) = 3  # Ray restarts a replica that dies, this many times (-1: always)
    startup_timeout_s: Seconds = 600.0  # fail (with the cause) if replicas are not up by then
    affinity_bound: Int(ge=0, le=MAX_COUNT) = 16  # prefix affinity holds while home load <= least + this
    max_batch: Count = 256  # requests per actor call
    max_calls_in_flight: Count = 4  # outstanding calls per replica (per search worker)
    # A call not answered by then is re-issued to another replica and its replica restarted
    # (a hang, not a death). None: no deadline.
    request_timeout_s: Seconds | None = None
    # re-issues of a request after replica losses before its problem fails
    max_retries: Int(ge=0, le=1000) = 8


@section
class GeneratorConfig:
    """What every generator backend has; each backend's own fields extend it."""

    backend: Text = "noisy_oracle"  # see `treesearch.backends.GENERATORS`
    max_step_tokens: Int(ge=1, le=1_000_000) = 48  # cap on generated tokens per step (budget worst case)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)

    embedded: typing.ClassVar[str | None] = None  # embedded model role it defaults to (game24)

    @property
    def ranks(self) -> int:
        """Processes (and GPUs) one replica spans (tensor parallelism)."""
        return 1


@section
class PRMConfig:
    """What every PRM backend has; each backend's own fields extend it."""

    backend: Text = "rule"  # see `treesearch.backends.PRMS`
    # Task checks multiplied into the PRM's step scores (treesearch.verifiers): "rule" (step
    # validity, legitimate) and/or "reachability" (the solver: an ORACLE). [] = the PRM alone.
    checks: list[Literal["rule", "reachability"]] = field(default_factory=list)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)

    embedded: typing.ClassVar[str | None] = None
