"""Game of 24: puzzle set, split, solver, strict checker, answers."""

from fractions import Fraction

import pytest

from treesearch.tasks import game24 as g
from treesearch.tasks.game24 import Game24


def test_solvable_set_is_1362_and_matches_tot(tot_csv):
    assert len(g.all_multisets()) == 1820
    assert len(g.solvable_puzzles()) == 1362
    every = g.read_tot_csv(tot_csv, 1, 1362)
    assert set(every) == set(g.solvable_puzzles())


def test_split_is_deterministic_and_disjoint():
    sp = g.project_split()
    assert (len(sp["test"]), len(sp["dev"]), len(sp["train"])) == (100, 100, 1162)
    assert not set(sp["test"]) & set(sp["train"]) and not set(sp["dev"]) & set(sp["train"])
    assert not set(sp["test"]) & set(sp["dev"])
    assert sp["test"][:3] == ((1, 1, 3, 7), (1, 1, 3, 10), (1, 1, 6, 6))  # pinned: never changes


def test_tot_test_split(tot_csv):
    task = Game24("tot_test", csv_path=str(tot_csv))
    puzzles = task.puzzles()
    assert len(puzzles) == 100 and all(g.reachable(g.state_of(p)) for p in puzzles)
    with pytest.raises(ValueError, match="csv_path"):
        Game24("tot_test").puzzles()
    with pytest.raises(FileNotFoundError):
        Game24("tot_test", csv_path="/nonexistent.csv").puzzles()


def test_solver_solutions_pass_the_strict_checker():
    task = Game24("all")
    for numbers in g.solvable_puzzles()[::17]:
        p = task.problem(numbers)
        steps = [m.text() for m in g.solve(g.state_of(numbers))]
        assert len(steps) == 3 and task.is_correct(p, steps)
        assert task.extract_answer(p, steps).endswith("= 24")


def test_integer_only_needs_no_fractions():
    # 1 5 5 5: 5 * (5 - 1/5) = 24 needs a fraction
    assert g.reachable(g.state_of((1, 5, 5, 5)))
    assert not g.reachable(g.state_of((1, 5, 5, 5)), integer_only=True)
    assert (1, 5, 5, 5) not in Game24("all", integer_only=True).puzzles()


@pytest.mark.parametrize(
    ("step", "reason"),
    [
        ("13 - 6 = 7 (left: 4 7 12)", ""),
        ("13 - 6 = 8 (left: 4 8 12)", "wrong arithmetic"),
        ("13 - 6 = 7 (left: 4 7)", "wrong left list"),
        ("13 - 6 = 7 (left: 12 7 4)", ""),  # order of the left list does not matter
        ("13 - 5 = 8 (left: 4 8 12)", "operand 5 not available"),
        ("6 - 6 = 0 (left: 0 4 12 13)", "operand 6 not available"),
        ("13 minus 6 is 7", "unparseable step"),
        ("12 / 8 = 3/2 (left: 3/2 4 13)", "operand 8 not available"),
    ],
)
def test_check_step(step, reason):
    state = g.state_of((4, 6, 12, 13))
    c = g.check_step(state, step)
    assert c.ok == (reason == "") and c.reason == reason


def test_fractions_and_negatives_in_steps():
    state = g.state_of((1, 5, 5, 5))
    c = g.check_step(state, "1 / 5 = 1/5 (left: 1/5 5 5)")
    assert c.ok and c.left == (Fraction(1, 5), 5, 5)
    c = g.check_step(c.left, "1/5 - 5 = -24/5 (left: -24/5 5)")
    assert c.ok and c.left == (Fraction(-24, 5), 5)


def test_correctness_needs_exactly_24_and_valid_steps():
    task = Game24("all")
    p = task.problem((4, 6, 12, 13))
    good = ["13 - 12 = 1 (left: 1 4 6)", "6 * 4 = 24 (left: 1 24)", "24 * 1 = 24 (left: 24)"]
    assert task.is_correct(p, good)
    assert task.extract_answer(p, good) == "(6 * 4) * (13 - 12) = 24"
    false_24 = ["13 - 12 = 1 (left: 1 4 6)", "6 * 4 = 24 (left: 1 24)", "24 + 1 = 24 (left: 24)"]
    assert not task.is_correct(p, false_24)
    assert task.verify_step(p, false_24) is False
    assert task.verify_step(p, good[:2]) is True
    not_24 = ["13 - 12 = 1 (left: 1 4 6)", "6 * 4 = 24 (left: 1 24)", "24 + 1 = 25 (left: 25)"]
    assert task.verify_step(p, not_24) is False  # a claimed final answer must be 24
    assert task.is_terminal(p, not_24) and not task.is_terminal(p, good[:2])
    assert task.extract_answer(p, good[:2]) is None
    # the oracle sees that 1 4 6 -> 1 5 6 is still solvable but 1 4 6 -> 1 10 ... is checked
    assert task.step_reachable(p, good[:1])
    assert not task.step_reachable(p, ["13 + 12 = 25 (left: 4 6 25)", "25 - 6 = 19 (left: 4 19)"])


def test_difficulty_orders_easy_before_hard():
    assert g.difficulty((1, 1, 4, 6)) < g.difficulty((3, 3, 8, 8))
    assert g.difficulty((1, 1, 1, 1)) == float("inf")


def test_unknown_split():
    with pytest.raises(ValueError, match="unknown game24 split"):
        Game24("validation")


def test_malformed_numbers_are_an_invalid_step_not_a_crash():
    # the embedded policy once wrote "12/0", and once "16813-6" in a left list (at T = 1.3);
    # the checker must reject them, not raise
    state = g.state_of([3, 4, 12])
    for step in (
        "12 / 0 = 12/0 (left: 3 4 12/0)",
        "4 * 3 = 12 (left: 12/0 12)",
        "4 * 3 = 12 (left: 16813-6)",
    ):
        assert not g.check_step(state, step).ok
    task = Game24("dev")
    problem = task.problem((3, 4, 12, 1))
    steps = ("12 - 1 = 11 (left: 3 4 11)", "11 / 0 = 11/0 (left: 3 4 11/0)")
    assert task.verify_step(problem, steps) is False


def _mutate(text: str, rng) -> str:
    """1-4 character insertions, substitutions or deletions (what a small sampled policy writes)."""
    step = list(text)
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(step) + 1)
        op = rng.random()
        if op < 0.4:
            step.insert(i, rng.choice("0123456789+-*/=() left:"))
        elif op < 0.8 and i < len(step):
            step[i] = rng.choice("0123456789+-*/=() left:")
        elif i < len(step):
            del step[i]
    return "".join(step)


def test_the_checker_never_raises_on_mutated_steps():
    """Mutated valid steps are judged, never crash the checker, and a step it accepts leaves
    exactly the numbers the step claims."""
    import random
    from collections import Counter

    rng = random.Random(0)
    state = g.state_of([3, 4, 12, 5])
    valid = [m.text() for m in g.legal_moves(state)]
    verdicts = Counter()
    for _ in range(5000):
        text = _mutate(rng.choice(valid), rng)
        check = g.check_step(state, text)
        verdicts["ok" if check.ok else check.reason.split()[0]] += 1
        if check.ok:
            assert sorted(check.left) == sorted(g.claimed_left(text)), text
    # every kind of verdict is reached: most mutations break the step, a few leave a legal one
    assert verdicts["ok"] > 50 and verdicts["unparseable"] > 3000
    assert verdicts["wrong"] > 300 and verdicts["operand"] > 100


def test_every_task_method_survives_mutated_chains():
    """Whole solutions with one step mutated go through every method the engine calls on
    model-written text (a model wrote a final ``(left: 10)`` after 10 was used up)."""
    import random

    from treesearch.training.game24_data import solution_paths

    rng = random.Random(1)
    task = Game24("dev")
    problem = task.problem((4, 5, 6, 10))
    paths = solution_paths(g.state_of([4, 5, 6, 10]))
    terminal = 0
    for _ in range(3000):
        steps = list(rng.choice(paths))
        i = rng.randrange(len(steps))
        steps[i] = _mutate(steps[i], rng)
        task.state(problem, steps)
        task.verify_step(problem, steps)
        answer = task.extract_answer(problem, steps)
        terminal += answer is not None
        assert task.is_correct(problem, steps) <= (answer is not None and answer.endswith("= 24"))
    assert terminal > 300  # the final-answer path is exercised: many keep a one-number claim
    used_up = ["10 - 4 = 6 (left: 5 6 6)", "6 - 5 = 1 (left: 1 6)", "6 * 1 = 6 (left: 10)"]
    assert task.extract_answer(problem, used_up) == "10 = 10"
