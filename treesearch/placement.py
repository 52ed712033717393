"""Where a job's replicas go on a cluster: a plan made before anything starts (no Ray needed).

Each replica asks, per ``resources`` section, ``num_cpus`` CPUs, ``num_gpus`` GPUs (a fraction
shares one GPU: two pools at 0.5 each fit on one) and ``custom`` resources; a replica of
``tensor_parallel_size`` ranks asks one bundle ``{GPU: max(num_gpus, 1), CPU: 1}`` per rank,
all on one node (Ray's STRICT_PACK placement group, :func:`actors.replicas.actor_options`).
:func:`plan` places them the way Ray's scheduler packs them (fractions onto the first GPU they
fit, whole GPUs on one node) and raises :class:`PlacementError` with what was asked and what
is free when they cannot fit. ``benchmarks/gpu_check.py --dry-run`` prints plans; the tests
check the shipped GPU configs against 1 GPU, 8 GPUs and 4 nodes of 8.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


class PlacementError(ValueError):
    """The replicas cannot fit on the cluster (the message says what was asked and what is free)."""


@dataclass
class Node:
    """A node of the cluster: CPUs, GPUs and custom resources (what is still free, as planned)."""

    name: str
    cpus: float
    gpus: int
    custom: dict[str, float] = field(default_factory=dict)
    gpu_free: list[float] = field(default_factory=list)  # free fraction of each GPU

    def __post_init__(self) -> None:
        if not self.gpu_free:
            self.gpu_free = [1.0] * self.gpus


@dataclass(frozen=True)
class Slot:
    """One replica's place: its node and the GPU ids it uses with the share of each."""

    pool: str
    replica: int
    node: str
    gpus: tuple[tuple[int, float], ...]


def cluster(
    nodes: int, gpus_per_node: int, cpus_per_node: float = 16.0, custom: dict | None = None
) -> list[Node]:
    """``nodes`` identical nodes."""
    return [Node(f"node{i}", cpus_per_node, gpus_per_node, dict(custom or {})) for i in range(nodes)]


def _take_gpus(node: Node, share: float, count: int) -> tuple[tuple[int, float], ...] | None:
    """``count`` GPUs with ``share`` free each on ``node`` (a fraction packs onto the fullest GPU
    it fits, as Ray does), or None."""
    if share < 1.0:
        fits = [g for g, free in enumerate(node.gpu_free) if free + 1e-9 >= share]
        if not fits:
            return None
        g = min(fits, key=lambda i: node.gpu_free[i])  # pack
        node.gpu_free[g] -= share
        return ((g, share),)
    whole = [g for g, free in enumerate(node.gpu_free) if free >= 1.0 - 1e-9]
    need = count * math.ceil(share)
    if len(whole) < need:
        return None
    for g in whole[:need]:
        node.gpu_free[g] = 0.0
    return tuple((g, 1.0) for g in whole[:need])


def _fits(node: Node, cpus: float, custom: dict[str, float]) -> bool:
    return node.cpus + 1e-9 >= cpus and all(node.custom.get(k, 0.0) + 1e-9 >= v for k, v in custom.items())


def place(pool: str, replicas: int, res: Any, ranks: int, nodes: Sequence[Node]) -> list[Slot]:
    """Places ``replicas`` of one pool (``res``: its ``ResourcesConfig``) on ``nodes``, updating
    what is free; raises :class:`PlacementError`."""
    slots = []
    for r in range(replicas):
        # a replica of several ranks: one bundle per rank, the shell takes no GPU
        share = (res.num_gpus or 1.0) if ranks > 1 else res.num_gpus
        count = ranks if ranks > 1 else 1
        cpus = res.num_cpus + (ranks if ranks > 1 else 0)
        for node in nodes:
            if not _fits(node, cpus, res.custom):
                continue
            gpus: tuple[tuple[int, float], ...] = ()
            if share > 0:
                taken = _take_gpus(node, share, count)
                if taken is None:
                    continue
                gpus = taken
            node.cpus -= cpus
            for k, v in res.custom.items():
                node.custom[k] -= v
            slots.append(Slot(pool, r, node.name, gpus))
            break
        else:
            free = {
                n.name: {"CPU": round(n.cpus, 2), "GPU": round(sum(n.gpu_free), 2), **n.custom} for n in nodes
            }
            asked = {"CPU": cpus, "GPU": share * count, **res.custom}
            raise PlacementError(
                f"{pool} replica {r} of {replicas} does not fit: it asks {asked}"
                + (f" on one node ({ranks} ranks)" if ranks > 1 else "")
                + f"; free: {free}"
            )
    return slots


def plan(sections: Any, nodes: Sequence[Node]) -> list[Slot]:
    """Every replica of a job's two pools (``sections``: its typed sections,
    :func:`treesearch.job.typed_sections`), placed (a PRM that runs beside the engine, as
    Monte-Carlo rollouts do, has no replicas)."""
    from treesearch.backends import backend_of

    gen, prm = sections.generator, sections.prm
    slots = place("generator", gen.resources.replicas, gen.resources, gen.ranks, nodes)
    if not backend_of(prm).engine_side:
        slots += place("prm", prm.resources.replicas, prm.resources, 1, nodes)
    return slots


def describe(slots: Sequence[Slot]) -> str:
    """One line per replica: pool, node, GPUs and shares."""
    lines = []
    for s in slots:
        gpus = ", ".join(f"GPU {g} x {share:g}" for g, share in s.gpus) or "no GPU"
        lines.append(f"{s.pool} {s.replica}: {s.node}: {gpus}")
    return "\n".join(lines)
