"""Training data of the embedded models: split exclusion, solution paths, labels, negatives."""

from __future__ import annotations

import random

import pytest

from treesearch.prm.math_shepherd import MathShepherdFormat
from treesearch.tasks import game24 as g24
from treesearch.training import game24_data as data
from treesearch.training.evaluate_policy import pass_at_k

PUZZLE = (4, 5, 6, 10)


def test_training_puzzles_exclude_every_test_puzzle(tot_csv):
    train = data.training_puzzles(tot_csv)
    held = data.held_out_puzzles(tot_csv)
    split = g24.project_split()
    assert not set(train) & held
    assert set(split["test"]) <= held and set(g24.read_tot_csv(tot_csv)) <= held
    assert len(train) == len(set(train)) == len(g24.solvable_puzzles()) - len(held)
    everything = data.training_puzzles(tot_csv, solvable_only=False)
    assert set(train) < set(everything) and not set(everything) & held


def test_solution_paths_are_correct_and_nonnegative():
    task = g24.Game24("dev")
    problem = task.problem(PUZZLE)
    paths = data.solution_paths(g24.state_of(PUZZLE))
    assert len(paths) >= 2 and len(set(paths)) == len(paths)
    for steps in paths:
        assert len(steps) == 3 and task.is_correct(problem, steps)
        assert "-" not in steps[0].split("=")[1]  # no negative intermediate
    assert data.solution_paths(g24.state_of((1, 1, 1, 1))) == ()


def test_step_labels_follow_validity_and_reachability():
    good = data.solution_paths(g24.state_of(PUZZLE))[0]
    assert data.step_labels(PUZZLE, good) == [True, True, True]
    wrong = "10 * 6 = 61 (left: 4 5 61)"
    assert data.step_labels(PUZZLE, (wrong, *good[1:])) == [False, False, False]
    state = g24.state_of(PUZZLE)
    dead = next(m for m in data.policy_moves(state) if not g24.reachable(m.left))
    assert data.step_labels(PUZZLE, (dead.text(),)) == [False]


@pytest.mark.parametrize("seed", range(3))
def test_every_corruption_is_an_invalid_step_of_its_kind(seed):
    rng = random.Random(seed)
    kinds = set()
    for puzzle in random.Random(seed).sample(list(g24.solvable_puzzles()), 60):
        prefix = data.random_valid_prefix(puzzle, rng.choice((0, 1, 2)), rng)
        assert prefix is not None
        state = data.state_after(puzzle, prefix)
        move = rng.choice(data.policy_moves(state))
        bad = data.corrupt(state, move, rng)
        kinds.add(bad.kind)
        check = g24.check_step(state, bad.text)
        assert not check.ok, (state, bad)
        assert data.step_labels(puzzle, (*prefix, bad.text))[-1] is False
    assert kinds == {"arithmetic", "left", "operand", "false24"}


def test_prm_text_is_the_math_shepherd_format_with_one_tag_per_step():
    steps = ("10 - 4 = 6 (left: 5 6 6)", "6 * 5 = 30 (left: 6 30)")
    text = data.prm_text(PUZZLE, steps)
    assert text == "4 5 6 10 10 - 4 = 6 (left: 5 6 6) ки\n6 * 5 = 30 (left: 6 30) ки"
    assert text == MathShepherdFormat().text(data.prompt_of(PUZZLE), steps)


def test_pass_at_k_estimator():
    assert pass_at_k(64, 0, 16) == 0.0 and pass_at_k(64, 64, 1) == 1.0
    assert pass_at_k(64, 16, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2)
    assert pass_at_k(64, 1, 64) == 1.0
