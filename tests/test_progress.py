"""Live progress: window rates (not totals over elapsed time), ETA, plain periodic lines when
not a terminal, status.json and `treesearch status --run-dir`."""

import io
import json

from treesearch.cli import main
from treesearch.progress import WINDOW_S, Progress

from .test_cli import CONFIGS


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _row(correct=True, tokens=100, status="ok"):
    ledger = {"policy_generated_tokens": tokens, "prm_tokens": 2 * tokens, "policy_prompt_tokens": 400,
              "policy_cached_prompt_tokens": 300}  # fmt: skip
    return {"status": status, "correct": correct, "covered": True, "ledger": ledger}


def test_rates_are_over_the_recent_window_and_the_eta_follows_them(tmp_path):
    clock, stream = Clock(), io.StringIO()
    p = Progress(100, stream=stream, status_path=tmp_path / "status.json", clock=clock)
    assert p.figures()["eta_s"] is None  # nothing finished: no rate, no ETA
    for i in range(40):  # one problem a second, 100 tokens each, for 40 s
        clock.t = i + 1.0
        p.update(_row(correct=i % 4 != 0))
    f = p.figures()
    assert abs(f["generated_tokens_per_s"] - 100.0) < 1e-6 and abs(f["prm_tokens_per_s"] - 200.0) < 1e-6
    assert abs(f["eta_s"] - 60.0) < 1e-6 and f["accuracy"] == 0.75 and f["prefix_cache_hit_rate"] == 0.75
    for i in range(40, 50):  # then ten problems in the next 100 s: the rate falls with them
        clock.t = 40.0 + (i - 39) * 10.0
        p.update(_row())
    f = p.figures()
    assert len(p.window) == 7 and abs(f["problems_per_s"] - 7 / WINDOW_S) < 1e-9  # 80..140 s, not 50 / 140 s
    assert abs(f["eta_s"] - 50 / (7 / WINDOW_S)) < 1e-6
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["state"] == "running" and status["done"] == 50 and status["total"] == 100


def test_plain_lines_come_every_ten_seconds_and_at_the_end_when_not_a_terminal(tmp_path):
    clock, stream = Clock(), io.StringIO()
    p = Progress(30, stream=stream, status_path=tmp_path / "status.json", clock=clock)
    for i in range(30):
        clock.t = i + 1.0
        p.update(_row(status="failed" if i == 3 else "ok"))
    lines = stream.getvalue().splitlines()
    assert [x.split()[0] for x in lines] == ["0/30", "10/30", "20/30", "30/30"]  # at 0, 10, 20 s, the end
    assert lines[0].endswith("ETA ?")  # nothing finished yet: no rate to divide by
    assert lines[-1].startswith("30/30  1 failed  accuracy 100.0%  coverage 100.0%  100 gen tok/s")
    assert lines[-1].endswith("ETA 0:00") and "\r" not in stream.getvalue()
    assert json.loads((tmp_path / "status.json").read_text())["state"] == "finished"


def test_status_of_a_run_dir(tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "run",
        str(CONFIGS / "game24-beam.yaml"),
        "--in-process",
        "--quiet",
        "--limit",
        "5",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    capsys.readouterr()
    assert main(["status", "--run-dir", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("finished: 5/5  accuracy ") and "ETA 0:00" in line
    assert main(["status", "--run-dir", str(tmp_path)]) == 2
    assert "no status.json" in capsys.readouterr().err
    assert main(["status"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: status: give JOB --address URL")


def test_a_vllm_run_says_its_start_and_progress_and_nothing_of_vllm(tmp_path):
    """The main job's config on the real stack (local Ray, vLLM generator and PRM actors), as
    `make demo` runs it, for 4 problems: stderr has our start-up lines and progress lines and
    none of vLLM's, Triton's or Ray's own (those stay in the session logs it names)."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "treesearch.cli", "run", str(CONFIGS / "game24.yaml"), "--limit", "4",
         "--out", str(tmp_path / "run"), "--set", "generator.gpu_memory_utilization=0.1",
         "--set", "prm.gpu_memory_utilization=0.1"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    err = proc.stderr.strip().splitlines()
    assert err[0].startswith("replica logs (vLLM and others): ") and err[0].endswith(
        "(--verbose shows them here)"
    )
    assert "generator: starting 1 replica(s) (vllm, embedded policy)" in err
    assert "PRM: starting 1 replica(s) (math_shepherd on vllm, embedded prm)" in err
    ready = [x for x in err if " ready in " in x]
    assert sorted(x.split(" ready in ")[0] for x in ready) == [
        "PRM 1/1 (math_shepherd on vllm, embedded prm)",
        "generator 1/1 (vllm, embedded policy)",
    ]
    progress = [x for x in err if x.split("  ")[0].endswith("/4")]
    assert progress[0].startswith("0/4  accuracy -") and progress[-1].startswith("4/4  accuracy ")
    ours = [err[0], *(x for x in err if x.split(":")[0] in ("generator", "PRM")), *ready, *progress]
    # nothing else: no vLLM, Triton or Ray Python-side lines; Ray's C++ core worker logs one line
    # of its own (search workers' constructor arguments live in the object store) at ERROR level
    assert all("core_worker.cc" in x for x in err if x not in ours), err
    assert not any("vllm" in x.lower() or "triton" in x.lower() for x in err if x not in ours), err
    assert "accuracy" in proc.stdout and "output:" in proc.stdout
