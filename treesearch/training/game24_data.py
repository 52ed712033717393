"""Training data for the embedded Game-of-24 policy and PRM (pure Python; no torch).

Text formats are the task's own (``treesearch.tasks.game24``): prompt ``"4 5 6 10\\n"``, steps
``"5 * 4 = 20 (left: 6 10 20)"`` joined by ``"\\n"``, the larger operand first for + and *,
no negative intermediates, fractions written ``p/q``; the policy ends a chain with ``"\\n"``
and end-of-sequence after the third step.

Splits: training puzzles are every 4-number multiset from 1..13 except the project's test
and dev splits and ToT's test puzzles (ranks 901-1000 of ``24.csv``, read from ``csv_path``;
the file stays out of the repo). Step labels come from the solver: a step is *good* iff every
step so far is valid and 24 is still reachable (Math-Shepherd's labelling, with the exact
solver in place of Monte-Carlo rollouts).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import cache
from pathlib import Path

from treesearch.prm.math_shepherd import MathShepherdFormat
from treesearch.tasks import game24 as g24
from treesearch.tasks.game24 import Move, State, fmt, fmt_state, state_of

TAG = "ки"  # Math-Shepherd's step tag (one added token)
GOOD, BAD = "+", "-"


# ----------------------------------------------------------------------------- splits
def held_out_puzzles(csv_path: str | Path) -> set[tuple[int, ...]]:
    """Puzzles never trained on: the project's test and dev splits and ToT's ranks 901-1000."""
    split = g24.project_split()
    return {*split["test"], *split["dev"], *g24.read_tot_csv(csv_path)}


def training_puzzles(csv_path: str | Path, solvable_only: bool = True) -> list[tuple[int, ...]]:
    held = held_out_puzzles(csv_path)
    pool = g24.solvable_puzzles() if solvable_only else g24.all_multisets()
    return [p for p in pool if p not in held]


# ----------------------------------------------------------------------------- moves
@cache
def policy_moves(state: State) -> tuple[Move, ...]:
    """The policy's move set: the task's legal moves without negative results."""
    return tuple(m for m in g24.legal_moves(state) if m.result >= 0)


@cache
def solution_paths(state: State) -> tuple[tuple[str, ...], ...]:
    """Every solution from ``state`` as step texts (policy move set)."""
    if len(state) == 1:
        return ((),) if state[0] == g24.TARGET else ()
    return tuple((m.text(), *rest) for m in policy_moves(state) for rest in solution_paths(m.left))


def prompt_of(numbers: Sequence[int]) -> str:
    return g24.Game24.problem(numbers).prompt


def policy_text(numbers: Sequence[int], steps: Sequence[str]) -> str:
    """The policy's training text for a whole chain (end-of-sequence is added by the caller)."""
    return prompt_of(numbers) + "".join(s + "\n" for s in steps)


# ----------------------------------------------------------------------------- labels
def step_labels(numbers: Sequence[int], steps: Sequence[str]) -> list[bool]:
    """Solver labels: step i is good iff steps 0..i are valid and 24 is reachable after it."""
    state, labels, ok = state_of(numbers), [], True
    for step in steps:
        if ok:
            c = g24.check_step(state, step)
            ok = c.ok and c.left is not None and g24.reachable(c.left)
            if ok:
                assert c.left is not None
                state = c.left
        labels.append(ok)
    return labels


def prm_text(numbers: Sequence[int], steps: Sequence[str]) -> str:
    """Math-Shepherd input: ``"{question} {step 1} ки\\n{step 2} ки..."``, exactly as the PRM
    actors build it (:class:`treesearch.prm.math_shepherd.MathShepherdFormat`)."""
    return MathShepherdFormat(step_tag=TAG, good_token=GOOD, bad_token=BAD).text(prompt_of(numbers), steps)


# ----------------------------------------------------------------------------- hard negatives
@dataclass(frozen=True)
class Corruption:
    """A wrong step aimed at a policy failure mode; ``kind`` names the mode."""

    kind: str  # arithmetic | left | operand | false24
    text: str


def _step(a: Fraction, op: str, b: Fraction, r: Fraction, left: Sequence[Fraction]) -> str:
    return f"{fmt(a)} {op} {fmt(b)} = {fmt(r)} (left: {fmt_state(state_of(left))})"


def _near(x: Fraction, rng: random.Random) -> Fraction:
    """A plausible wrong number near ``x`` (never ``x``, never negative)."""
    while True:
        choice = rng.random()
        if choice < 0.5:
            y = x + rng.choice([-3, -2, -1, 1, 2, 3])
        elif choice < 0.7:
            y = Fraction(rng.randint(1, 30))
        elif choice < 0.85:
            y = x * rng.choice([2, 3]) if x else Fraction(rng.randint(1, 13))
        else:
            y = Fraction(24)
        if y != x and y >= 0:
            return y


def corrupt(state: State, move: Move, rng: random.Random) -> Corruption:
    """One invalid step from ``state``, derived from the valid ``move``."""
    rest = list(state)
    rest.remove(move.a)
    rest.remove(move.b)
    kind = rng.choice(("arithmetic", "left", "operand", "false24"))
    if kind == "arithmetic":  # made-up result, left list consistent with it (the usual failure)
        r = _near(move.result, rng)
        return Corruption(kind, _step(move.a, move.op, move.b, r, [*rest, r]))
    if kind == "left":  # right result, wrong remaining numbers
        left = [*rest, move.result]
        i = rng.randrange(len(left))
        mode = rng.random()
        if mode < 0.4 and len(left) > 1:
            del left[i]
        elif mode < 0.6:
            left.append(left[i])
        else:
            left[i] = _near(left[i], rng)
        if state_of(left) == move.left:
            left.append(Fraction(rng.randint(1, 13)))
        return Corruption(
            kind,
            f"{fmt(move.a)} {move.op} {fmt(move.b)} = {fmt(move.result)} (left: {fmt_state(state_of(left))})",
        )
    if kind == "operand":  # an operand that is not available
        a = _near(move.a, rng)
        while a in state:
            a = _near(a, rng)
        r = g24.apply_op(a, move.op, move.b)
        if r is None or r < 0:
            r = _near(move.result, rng)
        return Corruption(kind, _step(a, move.op, move.b, r, [*rest, r]))
    # A false "= 24" that leaves only 24, wherever the chain is.
    return Corruption(
        kind,
        _step(move.a, move.op, move.b, Fraction(24), [*rest, Fraction(24)])
        if move.result != 24
        else _step(move.a, move.op, move.b, Fraction(23), [*rest, Fraction(23)]),
    )


def random_valid_prefix(numbers: Sequence[int], depth: int, rng: random.Random) -> list[str] | None:
    """``depth`` uniformly random policy moves from the puzzle (None if stuck)."""
    state, steps = state_of(numbers), []
    for _ in range(depth):
        moves = policy_moves(state)
        if not moves:
            return None
        m = rng.choice(moves)
        steps.append(m.text())
        state = m.left
    return steps


def state_after(numbers: Sequence[int], steps: Sequence[str]) -> State:
    c = g24.check_chain(numbers, steps)
    assert c.ok and c.left is not None, steps
    return c.left
