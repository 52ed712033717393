"""Generator and PRM backends, registered by name (:mod:`treesearch.backends.registry`).

Adding a backend: one file (its config class, its worker, a ``register(Backend(...))``)
and one import line below.
"""

from treesearch.backends import (  # noqa: F401  (each module registers its backends)
    deterministic,
    hf_generator,
    mc_rollout,
    vllm_generator,
)
from treesearch.backends.registry import GENERATORS, PRMS, Backend, WorkerEnv, backend_for, of, register
from treesearch.prm import math_shepherd, outcome_rm, qwen_prm  # noqa: F401

__all__ = ["GENERATORS", "PRMS", "Backend", "WorkerEnv", "backend_for", "of", "register"]
