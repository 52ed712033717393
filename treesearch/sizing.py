"""Budget-sized search shapes: how many step samples a problem's remaining budget affords.

An algorithm whose shape is ``auto`` (the default) reads :class:`Allowance` from its context
when it starts (and, for beam search, at every depth) and sizes itself from it: each
algorithm's docstring gives its rule. Pinned shapes are used as they are.

A *step sample* is one sampled reasoning step. Its expected cost in each budget unit
(:class:`StepCost`) comes from the task's typical step (``Task.example_steps``, tokenised by
the generator; ``max_step_tokens / 2`` when the task has none) and its expected depth:

==================  =====================================================================
unit                expected cost of a step sample (``t`` step tokens, ``P`` prompt tokens,
                    ``D`` expected depth; the worst case puts ``max_step_tokens`` for ``t``)
==================  =====================================================================
generated_tokens    ``t``
total_tokens        ``t + 2 (P + t D / 2)``: the step, its prompt and the PRM's chain
flops               the same tokens at ``2 x parameters`` of the model that runs them
generator_calls     1 (a call may carry several samples: a lower bound of what is affordable)
nodes               1
==================  =====================================================================

``Allowance.samples`` is what the tightest limited unit affords at the expected cost (the
number of samples to plan for), ``Allowance.worst`` what it affords at the reservation's
worst case (how many can be in flight at once without one being cut).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from treesearch.budget import BudgetGuard, ModelCost
from treesearch.schema import Auto  # noqa: F401  (a shape field sized by the budget)

UNLIMITED = math.inf
# Of a budget-sized search's step samples, the share spent at the root (beam, MCTS): most
# failures of a small policy are a first step from which the answer is out of reach (tuned on
# Game of 24's dev split: 28 of 44 samples).
ROOT_SHARE = 0.6


@dataclass(frozen=True)
class StepCost:
    """What a step sample is expected to cost (see module docstring).

    Attributes:
      step_tokens: expected generated tokens of one step (delimiter included).
      max_step_tokens: the step cap (the reservation's worst case).
      prompt_tokens: the problem's prompt.
      depth: expected steps of a finished chain.
      head_tokens: generated tokens of a step's head, the part that decides the step (the
        task's ``step_head`` tokenised by the generator; 0: the task names none), for
        :meth:`treesearch.context.SearchContext.expand_distinct`.
    """

    step_tokens: float
    max_step_tokens: int
    prompt_tokens: int
    depth: int
    head_tokens: int = 0

    def per_unit(self, unit: str, cost: ModelCost, worst: bool = False) -> float:
        """Cost of one step sample in ``unit`` (expected, or at the worst case)."""
        t = float(self.max_step_tokens) if worst else self.step_tokens
        context = self.prompt_tokens + t * self.depth / 2  # mean prompt of a step / PRM chain
        if unit == "generated_tokens":
            return t
        if unit == "total_tokens":
            return t + 2 * context
        if unit == "flops":
            return 2 * cost.policy_params * (t + context) + 2 * cost.prm_params * context
        return 1.0  # generator_calls, nodes


@dataclass(frozen=True)
class Allowance:
    """What a problem's remaining budget affords, in step samples (see module docstring).

    Attributes:
      samples: at the expected cost (``inf``: no limit).
      worst: at the worst case; at most this many samples can be reserved at once.
      depth: expected steps of a finished chain.
    """

    samples: float
    worst: float
    depth: int

    @property
    def limited(self) -> bool:
        return self.samples != UNLIMITED

    def chains(self) -> int:
        """Whole chains the allowance affords (at least 1)."""
        return max(1, int(self.samples // self.depth))


def allowance(guard: BudgetGuard, step: StepCost, cost: ModelCost) -> Allowance:
    """The :class:`Allowance` of ``guard``'s remaining budget (spent and in-flight deducted)."""
    samples = worst = UNLIMITED
    for unit in guard.limits:
        if unit == "seconds":
            continue
        left = max(0.0, guard.left(unit))
        samples = min(samples, left / max(step.per_unit(unit, cost), 1e-12))
        worst = min(worst, left / max(step.per_unit(unit, cost, worst=True), 1e-12))
    return Allowance(samples, worst, step.depth)


def sized(value: int | str, auto: float) -> int:
    """``value`` when pinned, else the sized ``auto`` (rounded down, at least 1)."""
    return value if isinstance(value, int) else max(1, int(auto))
