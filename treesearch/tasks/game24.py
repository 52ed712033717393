"""Game of 24 (Yao et al., 2023, "Tree of Thoughts", Section 4.1).

Combine four numbers with + - * / into 24, one operation per step. Step format, in the
spirit of ToT's propose prompt::

    13 - 6 = 7 (left: 4 7 12)

The ``left`` list is the multiset after the step, sorted ascending. Numbers are integers or
fractions written ``p/q``, either possibly negative (``-3``, ``-7/2``). A chain is correct iff
every step uses available numbers, its arithmetic is exact, its ``left`` list is exactly the
remaining multiset, and the last ``left`` is exactly ``24``.

Puzzles are the 4-number multisets from 1..13 that are solvable with fractions and negative
intermediates allowed: 1,362 of the 1,820 multisets (the same count as ToT's 24.csv).
"""

from __future__ import annotations

import csv
import math
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import cache, lru_cache
from itertools import combinations_with_replacement
from pathlib import Path

from treesearch.tasks.base import Problem

TARGET = Fraction(24)
OPS = "+-*/"
SPLIT_SEED = 24  # the project split is a seeded shuffle of the solvable set: never change it
N_TEST = 100
N_DEV = 100

State = tuple[Fraction, ...]  # a sorted multiset

# A zero denominator does not parse, and numbers in the left list need spaces between them
# ("16813-6" is not two numbers): a model can write either.
_NUM = r"-?\d+(?:/0*[1-9]\d*)?"
_STEP_RE = re.compile(
    rf"^\s*({_NUM})\s*([-+*/])\s*({_NUM})\s*=\s*({_NUM})\s*\(left:\s*({_NUM}(?:\s+{_NUM})*)\s*\)\s*$"
)


# ----------------------------------------------------------------------------- numbers
def fmt(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def parse_num(s: str) -> Fraction:
    # Fraction(str) runs a regex; most numbers are integers, which int() parses 5x faster
    if "/" in s:
        return Fraction(s)
    return Fraction(int(s))


def state_of(numbers: Sequence[Fraction | int]) -> State:
    return tuple(sorted(Fraction(n) for n in numbers))


def fmt_state(state: State) -> str:
    return " ".join(fmt(x) for x in state)


def apply_op(a: Fraction, op: str, b: Fraction) -> Fraction | None:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return None if b == 0 else a / b


@dataclass(frozen=True, slots=True)
class Move:
    """One operation ``a op b = result`` applied to ``state`` giving ``left``."""

    a: Fraction
    op: str
    b: Fraction
    result: Fraction
    left: State

    def text(self) -> str:
        return f"{fmt(self.a)} {self.op} {fmt(self.b)} = {fmt(self.result)} (left: {fmt_state(self.left)})"


def legal_moves(state: State, integer_only: bool = False) -> tuple[Move, ...]:
    """Every distinct legal move from ``state`` (memoised: searches revisit the same states).

    For + and *, the larger operand is written first (one canonical form); for - and /, both
    orders. Duplicated (operand pair, op) combinations from repeated numbers appear once.
    """
    return _legal_moves(state, integer_only)


@cache
def _legal_moves(state: State, integer_only: bool) -> tuple[Move, ...]:
    return tuple(_enumerate_moves(state, integer_only))


def _enumerate_moves(state: State, integer_only: bool) -> Iterator[Move]:
    seen: set[tuple[Fraction, str, Fraction]] = set()
    n = len(state)
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            a, b = state[i], state[j]
            rest = [state[k] for k in range(n) if k not in (i, j)]
            for op in OPS:
                if op in "+*" and a < b:
                    continue
                key = (a, op, b)
                if key in seen:
                    continue
                seen.add(key)
                r = apply_op(a, op, b)
                if r is None or (integer_only and r.denominator != 1):
                    continue
                yield Move(a, op, b, r, state_of([*rest, r]))


@cache
def reachable(state: State, integer_only: bool = False) -> bool:
    """Can 24 still be made from ``state``? (Exact, memoised over sorted multisets.)"""
    if len(state) == 1:
        return state[0] == TARGET
    return any(reachable(m.left, integer_only) for m in legal_moves(state, integer_only))


def solve(state: State, integer_only: bool = False) -> list[Move] | None:
    """One solution as a list of moves, or None."""
    if len(state) == 1:
        return [] if state[0] == TARGET else None
    for m in legal_moves(state, integer_only):
        if reachable(m.left, integer_only):
            rest = solve(m.left, integer_only)
            assert rest is not None
            return [m, *rest]
    return None


@cache
def good_moves(state: State) -> tuple[Move, ...]:
    """Legal moves after which 24 is still reachable (memoised)."""
    return tuple(m for m in legal_moves(state) if reachable(m.left))


@cache
def solve_probability(state: State) -> float:
    """P(a uniformly random legal move sequence from ``state`` reaches 24)."""
    if len(state) == 1:
        return float(state[0] == TARGET)
    moves = legal_moves(state)
    return sum(solve_probability(m.left) for m in moves) / len(moves) if moves else 0.0


def difficulty(numbers: Sequence[int]) -> float:
    """-log2 of :func:`solve_probability`: bits of luck a random player needs (higher = harder)."""
    p = solve_probability(state_of(numbers))
    return math.inf if p == 0 else -math.log2(p)


# ----------------------------------------------------------------------------- checking
@dataclass(frozen=True, slots=True)
class StepCheck:
    ok: bool
    reason: str  # "" when ok
    left: State | None  # the claimed left multiset (None if the step does not parse)


@dataclass(frozen=True, slots=True)
class ParsedStep:
    """A step's numbers as written (``a op b = result (left: ...)``), not yet checked."""

    a: Fraction
    op: str
    b: Fraction
    result: Fraction
    left: State
    names: tuple[str, str, str]  # a, b and result in canonical form (cheap dict keys)


@lru_cache(maxsize=1 << 18)
def parse_step(step: str) -> ParsedStep | None:
    """The step's numbers, or None if it does not parse (memoised: Fraction parsing was the
    largest share of the engine's CPU when every task method re-parsed the chain)."""
    m = _STEP_RE.match(step)
    if not m:
        return None
    a, b, r = parse_num(m[1]), parse_num(m[3]), parse_num(m[4])
    return ParsedStep(a, m[2], b, r, state_of(parse_num(x) for x in m[5].split()), (fmt(a), fmt(b), fmt(r)))


@lru_cache(maxsize=1 << 18)
def check_step(state: State, step: str) -> StepCheck:
    """Strict check of one step against the multiset ``state`` it is applied to (memoised)."""
    p = parse_step(step)
    if p is None:
        return StepCheck(False, "unparseable step", None)
    pool = list(state)
    for x in (p.a, p.b):
        if x not in pool:
            return StepCheck(False, f"operand {fmt(x)} not available", p.left)
        pool.remove(x)
    if apply_op(p.a, p.op, p.b) != p.result:
        return StepCheck(False, "wrong arithmetic", p.left)
    if state_of([*pool, p.result]) != p.left:
        return StepCheck(False, "wrong left list", p.left)
    return StepCheck(True, "", p.left)


def check_chain(numbers: Sequence[int], steps: Sequence[str]) -> StepCheck:
    """Checks every step in order; returns the first failure, or the final state."""
    return _check_chain(tuple(numbers), tuple(steps))


@lru_cache(maxsize=1 << 18)
def _check_chain(numbers: tuple[int, ...], steps: tuple[str, ...]) -> StepCheck:
    if not steps:
        return StepCheck(True, "", state_of(numbers))
    prev = _check_chain(numbers, steps[:-1])  # memoised: a chain's prefixes are checked once
    if not prev.ok:
        return prev
    assert prev.left is not None
    return check_step(prev.left, steps[-1])


def claimed_left(step: str) -> State | None:
    p = parse_step(step)
    return None if p is None else p.left


# ----------------------------------------------------------------------------- puzzles
def all_multisets() -> list[tuple[int, ...]]:
    return list(combinations_with_replacement(range(1, 14), 4))


@cache
def solvable_puzzles() -> tuple[tuple[int, ...], ...]:
    return tuple(p for p in all_multisets() if reachable(state_of(p)))


@cache
def project_split() -> dict[str, tuple[tuple[int, ...], ...]]:
    """Deterministic train / dev / test split of the solvable set (test: 100, never trained on)."""
    puzzles = list(solvable_puzzles())
    random.Random(SPLIT_SEED).shuffle(puzzles)
    test, dev = puzzles[:N_TEST], puzzles[N_TEST : N_TEST + N_DEV]
    train = puzzles[N_TEST + N_DEV :]
    return {"test": tuple(sorted(test)), "dev": tuple(sorted(dev)), "train": tuple(sorted(train))}


def read_tot_csv(path: str | Path, first_rank: int = 901, last_rank: int = 1000) -> list[tuple[int, ...]]:
    """Puzzles of ranks first..last (inclusive) from ToT's 24.csv (ranks 901-1000: ToT's test)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"Game-of-24 CSV not found: {p}")
    out = []
    with p.open(newline="") as f:
        for row in csv.DictReader(f):
            if first_rank <= int(row["Rank"]) <= last_rank:
                out.append(tuple(sorted(int(x) for x in row["Puzzles"].split())))
    return out


# ----------------------------------------------------------------------------- the task
class Game24:
    """The Game-of-24 task (see module docstring).

    Args:
      split: ``train``, ``dev``, ``test`` (the project's split), ``tot_test`` (ranks 901-1000
        of ToT's CSV at ``csv_path``) or ``all`` (every solvable puzzle).
      integer_only: keep only puzzles that have a solution without fractions.
      csv_path: ToT's 24.csv, for ``split: tot_test``.
    """

    name = "game24"
    step_delimiter = "\n"
    max_depth = 3
    expected_depth = 3  # steps of a finished chain (budget sizing, treesearch.sizing)
    # typical steps, delimiter included: their mean length in the generator's tokens is the
    # expected cost of a step when a search sizes itself by its budget
    example_steps = ("4 + 8 = 12 (left: 6 12 13)\n", "13 - 1 = 12 (left: 2 12)\n", "12 * 2 = 24 (left: 24)\n")
    # the head that decides a step (its operation): first steps are drawn as heads and merged
    step_head = "4 + 8 ="

    def __init__(self, split: str = "test", integer_only: bool = False, csv_path: str | None = None):
        splits = ("train", "dev", "test", "tot_test", "all")
        if split not in splits:
            raise ValueError(f"unknown game24 split {split!r}; expected one of {splits}")
        self.split, self.integer_only, self.csv_path = split, integer_only, csv_path

    def puzzles(self) -> list[tuple[int, ...]]:
        if self.split == "tot_test":
            if not self.csv_path:
                raise ValueError("game24 split 'tot_test' needs task.csv_path (ToT's 24.csv)")
            puzzles = read_tot_csv(self.csv_path)
        elif self.split == "all":
            puzzles = list(solvable_puzzles())
        else:
            puzzles = list(project_split()[self.split])
        if self.integer_only:
            puzzles = [p for p in puzzles if reachable(state_of(p), True)]
        return puzzles

    def problems(self) -> list[Problem]:
        return [self.problem(p) for p in self.puzzles()]

    @staticmethod
    def problem_from_text(text: str) -> Problem:
        """The puzzle a message states: its four numbers (1-13 each), e.g. ``4 6 8 13`` or ``Use
        4, 6, 8 and 13 to make 24``; a ValueError says what is wrong otherwise."""
        numbers = [int(x) for x in re.findall(r"(?<![\d.])\d+(?![\d.])", text)]
        if numbers and numbers[-1] == 24 and len(numbers) == 5:  # "... to make 24"
            numbers = numbers[:-1]
        if len(numbers) != 4 or not all(1 <= x <= 13 for x in numbers):
            shown = numbers[:6]
            raise ValueError(f"a Game-of-24 puzzle is four numbers from 1 to 13 (e.g. 4 6 8 13), not {shown}")
        return Game24.problem(numbers)

    @staticmethod
    def problem(numbers: Sequence[int]) -> Problem:
        nums = tuple(sorted(numbers))
        return Problem(
            id="-".join(map(str, nums)),
            prompt=" ".join(map(str, nums)) + "\n",
            data={"numbers": list(nums)},
        )

    def state(self, problem: Problem, steps: Sequence[str]) -> State:
        """The multiset the chain claims to hold (the last step's ``left``), valid or not."""
        if steps and (left := claimed_left(steps[-1])) is not None:
            return left
        return state_of(problem.data["numbers"])

    def is_terminal(self, problem: Problem, steps: Sequence[str]) -> bool:
        left = claimed_left(steps[-1]) if steps else None
        return left is not None and len(left) == 1

    def extract_answer(self, problem: Problem, steps: Sequence[str]) -> str | None:
        """The expression the chain builds, e.g. ``(13 - 6) * 4 - 4 = 24``; None if unfinished."""
        if not steps or not self.is_terminal(problem, steps):
            return None
        return _expression(tuple(problem.data["numbers"]), tuple(steps))

    def is_correct(self, problem: Problem, steps: Sequence[str]) -> bool:
        return self.check_solution(problem, steps)

    def check_solution(self, problem: Problem, steps: Sequence[str]) -> bool:
        """The game's own check of a finished chain: every step valid and the last leaves 24.
        Game of 24 states its target in its rules (there is no reference answer to read), so
        a real system runs this check; it is what early stopping trusts
        (:mod:`treesearch.stopping`) and, by construction, the same test as :meth:`is_correct`."""
        c = check_chain(problem.data["numbers"], steps)
        return c.ok and c.left == (TARGET,)

    def verify_step(self, problem: Problem, steps: Sequence[str]) -> bool | None:
        """Rule check of the last step (no look-ahead): valid given a valid chain before it."""
        if not steps:
            return None
        prev = check_chain(problem.data["numbers"], steps[:-1])
        if not prev.ok:
            return False
        assert prev.left is not None
        c = check_step(prev.left, steps[-1])
        if not c.ok:
            return False
        # A claimed final answer must be exactly 24.
        return not (len(c.left or ()) == 1 and c.left != (TARGET,))

    def step_reachable(self, problem: Problem, steps: Sequence[str]) -> bool:
        """ORACLE: every step valid and 24 still reachable. A ceiling, never a default verifier."""
        c = check_chain(problem.data["numbers"], steps)
        return c.ok and c.left is not None and reachable(c.left)


@lru_cache(maxsize=1 << 16)
def _expression(numbers: tuple[int, ...], steps: tuple[str, ...]) -> str | None:
    """:meth:`Game24.extract_answer` of a finished chain (memoised: searches resample chains)."""
    exprs: dict[str, list[str]] = {}  # number (canonical text) -> expressions that made it
    for n in numbers:
        exprs.setdefault(str(n), []).append(str(n))
    for step in steps:
        p = parse_step(step)
        if p is None:
            return None
        a, b, r = p.names
        ea = exprs[a].pop() if exprs.get(a) else a
        eb = exprs[b].pop() if exprs.get(b) else b
        exprs.setdefault(r, []).append(f"({ea} {p.op} {eb})")
    final = claimed_left(steps[-1])
    assert final is not None
    key = fmt(final[0])
    expr = (exprs.get(key) or [key])[-1]  # a claimed number may be used up
    if expr.startswith("(") and expr.endswith(")"):
        expr = expr[1:-1]
    return f"{expr} = {key}"
