"""One bad problem does not end a job: a task method that raises on one problem of 20 leaves 19
results and one ``failed`` row with its error, exit status 0 with the failure reported; and
``--retry-failed`` re-runs that one alone."""

from __future__ import annotations

import json

from treesearch.cli import main
from treesearch.tasks.game24 import Game24

from .test_cli import CONFIGS

RUN = ["run", str(CONFIGS / "game24-beam.yaml"), "--in-process", "--quiet", "--limit", "20"]


def test_a_raising_task_method_fails_one_problem_of_20_and_retry_failed_reruns_it(
    tmp_path, capsys, monkeypatch
):
    bad = Game24("test").problems()[7].id
    original = Game24.is_terminal

    def fragile(self, problem, steps):
        if problem.id == bad:
            raise IndexError("model text the task cannot read")
        return original(self, problem, steps)

    monkeypatch.setattr(Game24, "is_terminal", fragile)
    out = tmp_path / "run"
    assert main([*RUN, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"failed (not in accuracy)       1: {bad}" in printed, printed
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 20 and sum(r["status"] == "ok" for r in rows) == 19
    (failed,) = [r for r in rows if r["status"] == "failed"]
    assert failed["id"] == bad and failed["error"] == "IndexError: model text the task cannot read"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_problems"] == 19 and summary["failed"] == 1 and summary["failed_ids"] == [bad]
    assert summary["accuracy"] == sum(r["correct"] for r in rows if r["status"] == "ok") / 19

    monkeypatch.setattr(Game24, "is_terminal", original)  # the cause is fixed
    assert main([*RUN, "--out", str(out), "--retry-failed"]) == 0
    capsys.readouterr()
    run = json.loads((out / "run.json").read_text())
    assert run["sessions"][-1]["problems_run"] == 1  # only the failed one ran again
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_problems"] == 20 and summary["failed"] == 0


def test_a_job_whose_problems_keep_failing_stops_with_the_cause(tmp_path, capsys, monkeypatch):
    def broken(self, problem, steps):
        raise RuntimeError("the task is broken for every problem")

    monkeypatch.setattr(Game24, "is_terminal", broken)
    assert main([*RUN, "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: 6 problems failed (more than 5); last: RuntimeError: the task is broken for every problem"
    ] or (
        len(err) == 1 and "problems failed (more than 5)" in err[0] and "broken for every problem" in err[0]
    )
