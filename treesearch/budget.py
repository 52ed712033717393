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
uncached), so a finished search never exceeds a limit. Wall seconds are the exception: they
cannot be reserved, so a request is refused once the limit is reached.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

# Units a budget can cap; each is a ``Ledger`` attribute or property.
BUDGET_UNITS = (
    "generated_tokens",
    "total_tokens",
    "flops",
    "generator_calls",
    "nodes",
    "seconds",
)


@dataclass
class Ledger:
    """Counted compute, for one problem or summed over a job.

    Attributes:
      policy_prompt_tokens: prompt tokens sent to the generator (all, cached included).
      policy_cached_prompt_tokens: of those, tokens served from the prefix cache.
      policy_generated_tokens: tokens sampled by the generator.
      prm_tokens: tokens the PRM ran over.
      generator_calls: expansion requests (one prefix, k samples) answered.
      prm_calls: scoring requests (one chain) answered.
      nodes: tree nodes created (the root excluded).
      policy_prefill_flops, policy_decode_flops, prm_flops: FLOPs by phase (module docstring).
      wall_seconds: elapsed time of the search (job: of the whole run).
      nonfinite_scores: PRM scores that were NaN/inf and were mapped to the lowest score.
    """

    policy_prompt_tokens: int = 0
    policy_cached_prompt_tokens: int = 0
    policy_generated_tokens: int = 0
    prm_tokens: int = 0
    generator_calls: int = 0
    prm_calls: int = 0
    nodes: int = 0
    policy_prefill_flops: float = 0.0
    policy_decode_flops: float = 0.0
    prm_flops: float = 0.0
    wall_seconds: float = 0.0
    nonfinite_scores: int = 0

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
        return getattr(self, unit)

    def add(self, other: Ledger) -> None:
        """Adds every counter of ``other`` into this ledger (job totals)."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def to_dict(self) -> dict[str, float]:
        d = asdict(self)
        d["flops"] = self.flops
        d["total_tokens"] = self.total_tokens
        return d

    @classmethod
    def from_dict(cls, d: dict[str, float]) -> Ledger:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


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


@dataclass(frozen=True)
class Budget:
    """Per-problem caps; ``None`` means unlimited. Units: see :data:`BUDGET_UNITS`."""

    generated_tokens: int | None = None
    total_tokens: int | None = None
    flops: float | None = None
    generator_calls: int | None = None
    nodes: int | None = None
    seconds: float | None = None

    def limits(self) -> dict[str, float]:
        return {u: getattr(self, u) for u in BUDGET_UNITS if getattr(self, u) is not None}

    def __post_init__(self) -> None:
        for unit, limit in self.limits().items():
            if limit < 0:
                raise ValueError(f"budget.{unit} must be >= 0, got {limit}")


@dataclass
class BudgetGuard:
    """Tracks a problem's spent and reserved compute against its :class:`Budget`.

    ``reserve`` returns False (and reserves nothing) when the worst case of a request could
    push any limited unit over its limit; ``settle`` replaces a reservation by the real cost.
    """

    budget: Budget
    spent: Ledger = field(default_factory=Ledger)
    reserved: Ledger = field(default_factory=Ledger)

    def fits(self, worst: Ledger) -> bool:
        for unit, limit in self.budget.limits().items():
            if unit == "seconds":
                if self.spent.wall_seconds >= limit:
                    return False
                continue
            if self.spent.value(unit) + self.reserved.value(unit) + worst.value(unit) > limit:
                return False
        return True

    def reserve(self, worst: Ledger) -> bool:
        if not self.fits(worst):
            return False
        self.reserved.add(worst)
        return True

    def settle(self, worst: Ledger, actual: Ledger) -> None:
        """Releases the reservation ``worst`` and books ``actual``."""
        neg = Ledger(**{f.name: -getattr(worst, f.name) for f in fields(Ledger)})
        self.reserved.add(neg)
        self.spent.add(actual)
