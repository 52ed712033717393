"""CLI: the output dir contract, and one clear line with exit 2 for bad configs."""

import json
from pathlib import Path

import pytest
import yaml

from treesearch.algorithms import parse_algorithm
from treesearch.cli import main
from treesearch.config import JobConfig, load_config
from treesearch.schema import build
from treesearch.tree import Tree

from .helpers import run_local

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_run_writes_the_output_contract(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(
        [
            "run",
            str(CONFIGS / "game24-beam.yaml"),
            "--limit",
            "5",
            "--out",
            str(out),
            "--set",
            "algorithm.width=3",
            "--quiet",
            "--in-process",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "beam" in printed and str(out) in printed
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["algorithm"]["width"] == 3 and cfg["run"]["limit"] == 5
    assert parse_algorithm(build(JobConfig, cfg, "").algorithm)[1].width == 3  # resolved config reloads
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 5
    for row in rows:
        assert {"id", "answer", "correct", "covered", "nodes", "ledger"} <= row.keys()
        assert row["covered"] or not row["correct"]
        tree = Tree.from_msgpack((out / "trees" / f"{row['id']}.msgpack").read_bytes())
        assert len(tree) - 1 == row["nodes"] and tree.problem_id == row["id"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_problems"] == 5 and summary["algorithm"] == "beam"
    assert summary["accuracy"] == sum(r["correct"] for r in rows) / 5
    assert summary["coverage"] == sum(r["covered"] for r in rows) / 5
    for key in (
        "policy_prompt_tokens",
        "policy_cached_prompt_tokens",
        "policy_generated_tokens",
        "prm_tokens",
        "generator_calls",
        "prm_calls",
        "flops",
        "wall_seconds",
    ):
        assert key in summary["ledger"]
    assert summary["ledger"]["policy_generated_tokens"] == sum(
        r["ledger"]["policy_generated_tokens"] for r in rows
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "algorithm.widht=4"], "algorithm.widht: unknown field"),
        (
            ["--set", "algorithm.width=four"],
            "algorithm.width: 'four' is not an integer in [1, 1000000] or 'auto'",
        ),
        (["--set", "algorithm.name=astar"], "algorithm.name: 'astar' is not one of"),
        (["--set", "budget.tokens=5"], "budget.tokens: unknown field"),
        (["--set", "budget.nodes=-3"], "budget.nodes: -3 is not an integer in [1, 1000000000000] or null"),
        (["--set", "generator.error_rate=1.5"], "generator.error_rate: 1.5 is not a finite number in [0, 1]"),
        (["--set", "task.split=validation"], "task.split: 'validation' is not one of 'train', 'dev'"),
        (["--set", "generator.backend=vllm"], "generator.error_rate: unknown field of backend vllm"),
        (["--set", "generator={backend: hf}"], "generator.backend: 'hf' is not an in-process backend"),
        # a prefix: test_placement registers one more backend for its own tests
        (
            ["--set", "generator.backend=gpt"],
            "generator.backend: 'gpt' is not one of ['hf', 'noisy_oracle', ",
        ),
        (["--set", "algorithm.policy=foo"], "algorithm.policy: unknown field of algorithm beam"),
        (["--set", "nonsense"], "expected key=value"),
        (["--set", "algorithm.selection=median"], "algorithm.selection: 'median' is not one of"),
        (["--limit", "0"], "--limit must be >= 1"),
    ],
)
def test_bad_config_exits_2_with_one_line(tmp_path, capsys, args, message):
    rc = main(
        [
            "run",
            str(CONFIGS / "game24-beam.yaml"),
            "--out",
            str(tmp_path / "o"),
            "--quiet",
            "--in-process",
            *args,
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "o" / "results.jsonl").exists()  # failed before any search


def test_missing_and_malformed_config_files(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.yaml"), "--in-process"]) == 2
    assert "config file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: [unclosed\n")
    assert main(["run", str(bad), "--in-process"]) == 2
    assert "invalid YAML" in capsys.readouterr().err
    bad.write_text("- a list\n")
    assert main(["run", str(bad), "--in-process"]) == 2
    assert "expected a mapping" in capsys.readouterr().err


def test_every_shipped_config_loads_and_runs(tmp_path):
    configs = sorted(CONFIGS.glob("game24-*.yaml"))
    assert {c.stem.removeprefix("game24-") for c in configs} >= {
        "best_of_n",
        "beam",
        "dvts",
        "tot_bfs",
        "tot_dfs",
        "mcts",
    }
    for c in configs:
        cfg = load_config(c, ["run.limit=3"])
        summary = run_local(cfg, tmp_path / c.stem)
        assert summary["n_problems"] == 3 and summary["accuracy"] <= summary["coverage"]


def test_default_run_uses_a_local_ray(tmp_path, uses_ray):
    """Without --in-process, ``treesearch run`` starts a local Ray and runs on actor pools."""
    import subprocess
    import sys

    out = tmp_path / "ray-run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "treesearch.cli",
            "run",
            str(CONFIGS / "game24-beam.yaml"),
            "--limit",
            "3",
            "--out",
            str(out),
            "--quiet",
            "--set",
            "run.ray_num_cpus=2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_problems"] == 3 and sum(summary["dispatch"]["generator_routed"]) > 0
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "treesearch.cli",
            "run",
            str(CONFIGS / "game24-beam.yaml"),
            "--out",
            str(tmp_path / "bad"),
            "--set",
            f"generator={{backend: vllm, model: {tmp_path / 'no-such-model'}}}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        f"error: generator.model: model directory not found: {tmp_path / 'no-such-model'}"
    ]


def test_sigkill_mid_run_then_resume_answers_each_problem_once(tmp_path, takes_long):
    """Kill the driver (SIGKILL) mid-run, resume: every problem answered exactly once, finished
    ones not recomputed, and the totals equal those of an uninterrupted run."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    base = [
        sys.executable,
        "-m",
        "treesearch.cli",
        "run",
        str(CONFIGS / "game24-mcts.yaml"),
        "--in-process",
        "--quiet",
        "--out",
        str(out),
        "--limit",
        "24",
        "--set",
        "run.concurrency=4",
    ]
    slow = ["--set", "generator.latency_s=0.03"]  # operational: does not change the config hash
    proc = subprocess.Popen(base + slow, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = out / "results.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not results.exists() or len(results.read_text().splitlines()) < 6):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = results.read_bytes()
    first_rows = [json.loads(x) for x in first.decode().splitlines() if x.endswith("}")]
    assert 6 <= len(first_rows) < 24 and not (out / "summary.json").exists()

    changed = subprocess.run([*base, "--resume", "--set", "algorithm.c=2.0"], capture_output=True, text=True)
    assert changed.returncode == 2 and "config differs in algorithm.c" in changed.stderr
    assert subprocess.run(base, capture_output=True, text=True).returncode == 2  # no silent overwrite

    done = subprocess.run([*base, "--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(x) for x in results.read_text().splitlines()]
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == 24  # each problem exactly once
    assert results.read_bytes().startswith(first[: first.rfind(b"\n") + 1])  # finished ones kept as they were
    meta = json.loads((out / "run.json").read_text())
    assert [s["problems_run"] for s in meta["sessions"]][-1] == 24 - len(first_rows)  # not recomputed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sessions"] == 2 and summary["n_problems"] == 24  # refused attempts leave no session

    ref = tmp_path / "ref"
    assert (
        subprocess.run(
            [*base[:-6], "--out", str(ref), "--limit", "24", "--set", "run.concurrency=4"]
        ).returncode
        == 0
    )
    ref_summary = json.loads((ref / "summary.json").read_text())
    for key in (
        "policy_generated_tokens",
        "policy_prompt_tokens",
        "prm_tokens",
        "generator_calls",
        "prm_calls",
        "nodes",
    ):
        assert summary["ledger"][key] == ref_summary["ledger"][key] == sum(r["ledger"][key] for r in rows)
    assert summary["accuracy"] == ref_summary["accuracy"]
