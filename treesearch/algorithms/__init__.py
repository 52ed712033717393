"""Search algorithms, one file each. ``ALGORITHMS`` maps a config name to its entry."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from treesearch.algorithms.adaptive import AdaptiveConfig, adaptive
from treesearch.algorithms.beam import BeamConfig, beam_search
from treesearch.algorithms.best_of_n import BestOfNConfig, best_of_n
from treesearch.algorithms.dvts import DVTSConfig, dvts
from treesearch.algorithms.mcts import MCTSConfig, mcts, mcts_shared
from treesearch.algorithms.tot_bfs import ToTBFSConfig, tot_bfs
from treesearch.algorithms.tot_dfs import ToTDFSConfig, tot_dfs
from treesearch.errors import ConfigError
from treesearch.schema import build


@dataclass(frozen=True)
class Algorithm:
    """A search algorithm: its typed config and ``run(ctx, config) -> chosen node``; ``shared``:
    ``shared(ctx, config, store)``, one worker's part of a search of a tree several workers
    share (tree-parallel), for algorithms that have one."""

    name: str
    config: type
    run: Callable[[Any, Any], Awaitable[int | None]]
    shared: Callable[[Any, Any, Any], Awaitable[None]] | None = None


ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in (
        Algorithm("best_of_n", BestOfNConfig, best_of_n),
        Algorithm("beam", BeamConfig, beam_search),
        Algorithm("dvts", DVTSConfig, dvts),
        Algorithm("tot_bfs", ToTBFSConfig, tot_bfs),
        Algorithm("tot_dfs", ToTDFSConfig, tot_dfs),
        Algorithm("mcts", MCTSConfig, mcts, mcts_shared),
        Algorithm("adaptive", AdaptiveConfig, adaptive),
    )
}


def parse_algorithm(section: dict[str, Any], where: str = "algorithm") -> tuple[Algorithm, Any]:
    """An ``algorithm:`` mapping as its algorithm and typed options (``name`` picks them: a tagged
    section); a ConfigError names the field."""
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(section).__name__}")
    params = dict(section)
    name = params.pop("name", None)
    if name not in ALGORITHMS:
        raise ConfigError(f"{where}.name: {name!r} is not one of {sorted(ALGORITHMS)}")
    return ALGORITHMS[name], build(ALGORITHMS[name].config, params, where, f"algorithm {name}")


__all__ = [
    "ALGORITHMS",
    "AdaptiveConfig",
    "Algorithm",
    "BeamConfig",
    "BestOfNConfig",
    "DVTSConfig",
    "MCTSConfig",
    "ToTBFSConfig",
    "ToTDFSConfig",
    "parse_algorithm",
]
