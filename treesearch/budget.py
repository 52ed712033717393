"""Compute ledger and budgets.

Every generator request reports prompt tokens, cached prompt tokens and generated tokens;
every PRM request reports tokens scored. FLOPs follow the standard 2 x parameters x tokens
estimate (Kaplan et al., 2020), split by phase:

* policy prefill: 2 * P_policy * (prompt tokens - cached prompt tokens), since a prefix-cache
  hit skips the forward pass over those tokens;
* policy decode: 2 * P_policy * generated tokens;
* PRM: 2 * P_prm * tokens scored.

A :class:`Budget` caps any of the ledger's units. It is enforced *before* a request is sent:
each request reserves its worst case (k samples x the step-token cap, every prompt token
uncached; the PRM's input-token upper bound), so a finished search never exceeds a limit.
Wall seconds are the exception: they cannot be reserved, so a request is refused once the
limit is reached.

The ledger is on the engine's hot path (a reservation and a booking per request), so its
arithmetic is spelled out field by field rather than reflected over ``dataclasses.fields``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from treesearch.schema import MAX_COUNT, Float, Int, Probability, Seconds, Tokens, section

# Units a budget can cap; each is a ``Ledger`` attribute or property.
BUDGET_UNITS = (
    "generated_tokens",
    "total_tokens",
    "flops",
    "generator_calls",
    "nodes",
    "seconds",
)

# The ledger's counters, in serialisation order.
LEDGER_FIELDS = (
    "policy_prompt_tokens",
    "policy_cached_prompt_tokens",
    "policy_generated_tokens",
    "prm_tokens",
    "generator_calls",
    "prm_calls",
    "nodes",
    "policy_prefill_flops",
    "policy_decode_flops",
    "prm_flops",
    "wall_seconds",
    "nonfinite_scores",
    "early_stops",
    "budget_returned",
)
# Ledger entries (and the derived "flops") that depend on a replica's prefix-cache state (warm
# across jobs, cold after a restart) or on time: left out when two runs' ledgers are compared.
CACHE_DEPENDENT = ("wall_seconds", "policy_cached_prompt_tokens", "policy_prefill_flops", "flops")


def comparable_rows(rows: list[dict]) -> list[dict]:
    """``results.jsonl`` rows sorted by id, their ledgers without :data:`CACHE_DEPENDENT`."""
    out = [{**r, "ledger": {k: v for k, v in r["ledger"].items() if k not in CACHE_DEPENDENT}} for r in rows]
    return sorted(out, key=lambda r: r["id"])


class Ledger:
    """Counted compute, for one problem or summed over a job.

    Attributes:
      policy_prompt_tokens: prompt tokens sent to the generator (all, cached included).
      policy_cached_prompt_tokens: of those, tokens served from the prefix cache.
      policy_generated_tokens: tokens sampled by the generator.
      prm_tokens: tokens the PRM ran over.
      generator_calls: expansion requests (one prefix, k samples) answered.
      prm_calls: chains scored (a request may carry several).
      nodes: tree nodes created (the root excluded).
      policy_prefill_flops, policy_decode_flops, prm_flops: FLOPs by phase (module docstring).
      wall_seconds: elapsed time of the search (job: of the whole run).
      nonfinite_scores: PRM scores that were NaN/inf and were mapped to the lowest score.
      early_stops: searches stopped early (a verified chain, or the stop threshold met).
      budget_returned: what a search stopped early left of its budget, in the budget's first
        limited unit (:meth:`Budget.unit`); with ``scope: job`` it went back to the pool.
    """

    __slots__ = LEDGER_FIELDS

    def __init__(
        self,
        policy_prompt_tokens: int = 0,
        policy_cached_prompt_tokens: int = 0,
        policy_generated_tokens: int = 0,
        prm_tokens: int = 0,
        generator_calls: int = 0,
        prm_calls: int = 0,
        nodes: int = 0,
        policy_prefill_flops: float = 0.0,
        policy_decode_flops: float = 0.0,
        prm_flops: float = 0.0,
        wall_seconds: float = 0.0,
        nonfinite_scores: int = 0,
        early_stops: int = 0,
        budget_returned: float = 0.0,
    ):
        self.policy_prompt_tokens = policy_prompt_tokens
        self.policy_cached_prompt_tokens = policy_cached_prompt_tokens
        self.policy_generated_tokens = policy_generated_tokens
        self.prm_tokens = prm_tokens
        self.generator_calls = generator_calls
        self.prm_calls = prm_calls
        self.nodes = nodes
        self.policy_prefill_flops = policy_prefill_flops
        self.policy_decode_flops = policy_decode_flops
        self.prm_flops = prm_flops
        self.wall_seconds = wall_seconds
        self.nonfinite_scores = nonfinite_scores
        self.early_stops = early_stops
        self.budget_returned = budget_returned

    # Derived units used by budgets and summaries.
    @property
    def generated_tokens(self) -> int:
        return self.policy_generated_tokens

    @property
    def total_tokens(self) -> int:
        """Policy prompt + generated tokens + PRM tokens."""
        return self.policy_prompt_tokens + self.policy_generated_tokens + self.prm_tokens

    @property
    def flops(self) -> float:
        return self.policy_prefill_flops + self.policy_decode_flops + self.prm_flops

    @property
    def seconds(self) -> float:
        return self.wall_seconds

    def value(self, unit: str) -> float:
        if unit not in BUDGET_UNITS:
            raise ValueError(f"unknown budget unit {unit!r}; expected one of {BUDGET_UNITS}")
        return UNIT_VALUE[unit](self)

    def add(self, o: Ledger) -> None:
        """Adds every counter of ``o`` into this ledger (job totals)."""
        self.policy_prompt_tokens += o.policy_prompt_tokens
        self.policy_cached_prompt_tokens += o.policy_cached_prompt_tokens
        self.policy_generated_tokens += o.policy_generated_tokens
        self.prm_tokens += o.prm_tokens
        self.generator_calls += o.generator_calls
        self.prm_calls += o.prm_calls
        self.nodes += o.nodes
        self.policy_prefill_flops += o.policy_prefill_flops
        self.policy_decode_flops += o.policy_decode_flops
        self.prm_flops += o.prm_flops
        self.wall_seconds += o.wall_seconds
        self.nonfinite_scores += o.nonfinite_scores
        self.early_stops += o.early_stops
        self.budget_returned += o.budget_returned

    def sub(self, o: Ledger) -> None:
        """Subtracts every counter of ``o`` (releases a reservation)."""
        self.policy_prompt_tokens -= o.policy_prompt_tokens
        self.policy_cached_prompt_tokens -= o.policy_cached_prompt_tokens
        self.policy_generated_tokens -= o.policy_generated_tokens
        self.prm_tokens -= o.prm_tokens
        self.generator_calls -= o.generator_calls
        self.prm_calls -= o.prm_calls
        self.nodes -= o.nodes
        self.policy_prefill_flops -= o.policy_prefill_flops
        self.policy_decode_flops -= o.policy_decode_flops
        self.prm_flops -= o.prm_flops
        self.wall_seconds -= o.wall_seconds
        self.nonfinite_scores -= o.nonfinite_scores
        self.early_stops -= o.early_stops
        self.budget_returned -= o.budget_returned

    def copy(self) -> Ledger:
        out = Ledger()
        out.add(self)
        return out

    def to_dict(self) -> dict[str, float]:
        d: dict[str, float] = {name: getattr(self, name) for name in LEDGER_FIELDS}
        d["flops"] = self.flops
        d["total_tokens"] = self.total_tokens
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Ledger:
        return cls(**{k: v for k, v in d.items() if k in _FIELD_SET})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ledger) and all(getattr(self, n) == getattr(other, n) for n in LEDGER_FIELDS)

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in LEDGER_FIELDS if getattr(self, n))
        return f"Ledger({inner})"

    def __reduce__(self) -> tuple:  # slots without __dict__: pickle as positional counters
        return (Ledger, tuple(getattr(self, n) for n in LEDGER_FIELDS))


_FIELD_SET = frozenset(LEDGER_FIELDS)

# unit -> its value on a ledger, without getattr-by-name on the hot path
UNIT_VALUE: dict[str, Callable[[Ledger], float]] = {
    "generated_tokens": lambda x: x.policy_generated_tokens,
    "total_tokens": lambda x: x.policy_prompt_tokens + x.policy_generated_tokens + x.prm_tokens,
    "flops": lambda x: x.policy_prefill_flops + x.policy_decode_flops + x.prm_flops,
    "generator_calls": lambda x: x.generator_calls,
    "nodes": lambda x: x.nodes,
    "seconds": lambda x: x.wall_seconds,
}


@dataclass(frozen=True)
class ModelCost:
    """Parameter counts used for FLOPs (read from the model by the backends)."""

    policy_params: float = 0.0
    prm_params: float = 0.0

    def generation(self, prompt: int, cached: int, generated: int) -> tuple[float, float]:
        """(prefill FLOPs, decode FLOPs) of one generator request."""
        return 2.0 * self.policy_params * (prompt - cached), 2.0 * self.policy_params * generated

    def scoring(self, tokens: int) -> float:
        return 2.0 * self.prm_params * tokens


EarlyStop = Literal["auto", "verified", "threshold", "never"]


@section(frozen=True)
class Budget:
    """Per-problem caps (``None``: unlimited; units: :data:`BUDGET_UNITS`), where compute may
    go (``scope``) and when a search stops before its cap (``early_stop``).

    Early stopping (:mod:`treesearch.stopping`): ``verified`` stops a problem's search once a
    finished chain passes the task's exact check (Game of 24: every step valid and the last
    leaves 24), and that chain is the answer; ``threshold`` stops once a finished chain's PRM
    score is >= ``stop_score`` or ``stop_votes`` (> 0) scored finished chains give one answer;
    ``auto`` is ``verified`` for tasks with an exact check and ``never`` for the others (a PRM's
    confidence is not safe to stop on by default).
    """

    generated_tokens: Tokens | None = None
    total_tokens: Tokens | None = None
    flops: Float(gt=0, le=1e30) | None = None
    generator_calls: Tokens | None = None
    nodes: Tokens | None = None
    seconds: Seconds | None = None
    # "problem": each problem has the caps above. "job": the caps x the number of problems are
    # one pool (treesearch.job_budget): each problem starts with floor x its share, then compute
    # goes by priority to the problems still open, none over cap x its share.
    scope: Literal["problem", "job"] = "problem"
    floor: Float(gt=0, le=1) = 0.5  # job scope: a problem's first round, as a fraction of its share
    cap: Float(ge=1, le=1000) = 4.0  # job scope: most a problem may spend, as a multiple of its share
    explore: Float(ge=0, le=100) = 0.5  # job scope: UCT exploration constant of the priority over problems
    early_stop: EarlyStop = "auto"
    stop_score: Probability = 0.9  # threshold: a finished chain's PRM score that ends the search
    stop_votes: Int(ge=0, le=MAX_COUNT) = 0  # threshold: finished chains agreeing on an answer (0: off)

    def limits(self) -> dict[str, float]:
        return {u: getattr(self, u) for u in BUDGET_UNITS if getattr(self, u) is not None}

    def unit(self) -> str | None:
        """The first limited unit (the one ``budget_returned`` and job budgets count in)."""
        return next(iter(self.limits()), None)

    def __post_init__(self) -> None:
        if self.scope == "job":
            units = [u for u in self.limits() if u != "seconds"]
            if len(units) != 1:
                raise ValueError(f"scope job needs one limited unit besides seconds, got {units}")


class Costs(NamedTuple):
    """A request's worst case as the limited units see it (seconds cannot be reserved)."""

    generated_tokens: float
    total_tokens: float
    flops: float
    generator_calls: float
    nodes: float


COST_UNITS = Costs._fields


class BudgetGuard:
    """Tracks a problem's spent and reserved compute against its :class:`Budget`.

    A request reserves its worst case first (``reserve``: False, and nothing reserved, when it
    could push a limited unit over its limit) and releases it when its real cost is booked
    into ``spent``. On the engine's hot path the worst case is a :data:`Costs` tuple
    (``reserve_costs`` / ``release_costs``) and the caller books the real cost into ``spent``
    field by field; ``reserve`` / ``book`` take whole ledgers.

    Attributes:
      budget: the caps.
      spent: compute booked so far.
      in_flight: worst cases of the requests reserved and not yet released, by
        :data:`COST_UNITS`.
    """

    __slots__ = ("_checks", "_seconds", "budget", "in_flight", "limits", "spent")

    def __init__(self, budget: Budget, spent: Ledger | None = None):
        self.budget = budget
        self.spent = spent if spent is not None else Ledger()
        self.in_flight = [0.0] * len(COST_UNITS)
        self.limits: dict[str, float] = {}
        self._seconds: float | None = None
        self._checks: tuple = ()
        for unit, limit in budget.limits().items():
            self.set_limit(unit, limit)

    def set_limit(self, unit: str, limit: float) -> None:
        """Caps ``unit`` at ``limit`` (a job pool grants a problem its rounds this way)."""
        self.limits[unit] = limit
        limits = dict(self.limits)
        self._seconds = limits.pop("seconds", None)
        self._checks = tuple((COST_UNITS.index(u), UNIT_VALUE[u], lim) for u, lim in limits.items())

    def left(self, unit: str) -> float:
        """What is left of ``unit``'s limit, spent and in-flight deducted (inf: no limit)."""
        if unit not in self.limits:
            return float("inf")
        flight = self.in_flight[COST_UNITS.index(unit)] if unit != "seconds" else 0.0
        return self.limits[unit] - self.spent.value(unit) - flight

    @property
    def reserved(self) -> Ledger:
        """The requests in flight as a ledger (their worst cases: tokens, calls, nodes)."""
        gen, total, flops, calls, nodes = self.in_flight
        return Ledger(0, 0, int(gen), int(total - gen), int(calls), 0, int(nodes), 0.0, 0.0, flops)

    def reserve_costs(self, costs: Costs) -> bool:
        if self._seconds is not None and self.spent.wall_seconds >= self._seconds:
            return False
        spent, flight = self.spent, self.in_flight
        for i, value, limit in self._checks:
            if value(spent) + flight[i] + costs[i] > limit:
                return False
        flight[0] += costs[0]
        flight[1] += costs[1]
        flight[2] += costs[2]
        flight[3] += costs[3]
        flight[4] += costs[4]
        return True

    def release_costs(self, costs: Costs) -> None:
        flight = self.in_flight
        flight[0] -= costs[0]
        flight[1] -= costs[1]
        flight[2] -= costs[2]
        flight[3] -= costs[3]
        flight[4] -= costs[4]

    @staticmethod
    def costs(worst: Ledger) -> Costs:
        return Costs(
            worst.policy_generated_tokens,
            worst.total_tokens,
            worst.flops,
            worst.generator_calls,
            worst.nodes,
        )

    def fits(self, worst: Ledger) -> bool:
        costs = self.costs(worst)
        if self._seconds is not None and self.spent.wall_seconds >= self._seconds:
            return False
        return all(
            value(self.spent) + self.in_flight[i] + costs[i] <= limit for i, value, limit in self._checks
        )

    def reserve(self, worst: Ledger) -> bool:
        return self.reserve_costs(self.costs(worst))

    def book(self, worst: Ledger, actual: Ledger) -> None:
        """Releases the reservation ``worst`` and books ``actual``."""
        self.release_costs(self.costs(worst))
        self.spent.add(actual)
