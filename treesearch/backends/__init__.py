"""Generator and PRM backends, registered by name (:mod:`treesearch.backends.registry`).

Adding a backend: one file (its config class, its worker, a ``register(Backend(...))``)
and one import line below.
"""

from treesearch.backends import (  # noqa: F401  (each module registers its backends)
    deterministic,
    hf_generator,
    mc_rollout,
    prm_models,
    vllm_generator,
)
from treesearch.backends.registry import (
    GENERATORS,
    PRMS,
    Backend,
    WorkerEnv,
    backend_for,
    backend_of,
    parse_section,
    register,
)

__all__ = [
    "GENERATORS",
    "PRMS",
    "Backend",
    "WorkerEnv",
    "backend_for",
    "backend_of",
    "parse_section",
    "register",
]
