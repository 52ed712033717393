"""Search jobs on a Ray cluster through Ray Jobs (``ray.job_submission.JobSubmissionClient``).

``submit`` validates the config locally, stages a working dir holding the resolved config and
the ``treesearch`` / ``actors`` packages, asks the cluster's Python whether it can run the job
(:func:`preflight`, a tiny Ray job with the same interpreter and runtime env), and submits
``PYTHON -m treesearch.cli run job.yaml --address auto --out OUT --resume`` (so a resubmitted
job pointing at the same OUT continues it). ``PYTHON`` is ``python`` on the cluster's PATH
unless ``--python`` names one; ``--pip`` / ``--uv`` install treesearch[ray]'s requirements (or
a requirements file) for the job through its runtime env. The job's metadata records OUT, so
``results`` finds the run dir. A FAILED or STOPPED job's ``status`` / ``watch`` / ``results``
say why (:mod:`treesearch.job_failure`). Ray's token authentication: the token comes from
``RAY_AUTH_TOKEN`` or Ray's default token file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ray
import yaml
from ray.job_submission import JobStatus, JobSubmissionClient

import actors
import treesearch
from treesearch.config import load_config
from treesearch.errors import ConfigError
from treesearch.job import cluster_needs, typed_sections
from treesearch.job_failure import explain, last_error_line
from treesearch.preflight import PROBE, Needs, parse, problems, requirements
from treesearch.progress import describe_status
from treesearch.runner import results_text
from treesearch.storage import is_uri, read_text

TERMINAL_STATES = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}


def auth_headers() -> dict[str, str]:
    """Ray's token, as Ray finds it: ``RAY_AUTH_TOKEN``, else the file at ``RAY_AUTH_TOKEN_PATH``,
    else ``~/.ray/auth_token``; none with ``RAY_AUTH_MODE=disabled``. Sent explicitly because
    the job client only attaches it when token auth is switched on in the client process."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return {}
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if not token:
        path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
        token = path.read_text().strip() if path.is_file() else ""
    return {"Authorization": f"Bearer {token}"} if token else {}


def client(address: str) -> JobSubmissionClient:
    # Ray's INFO lines about uploading the working dir are not the user's business on stderr
    for name in ("ray.dashboard.modules.dashboard_sdk", "ray._private.runtime_env.packaging"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        return JobSubmissionClient(address, headers=auth_headers())
    except Exception as e:  # connection, auth and version errors alike
        raise ConfigError(
            f"--address {address}: cannot reach the Ray job server: {str(e).splitlines()[0]}"
        ) from e


def packages(installer: str | None, requirements_file: str | None) -> dict[str, list[str]]:
    """The runtime env's ``pip`` / ``uv`` entry (``installer``): the requirements of
    treesearch[ray] as installed here, or the lines of ``requirements_file``."""
    if installer is None:
        return {}
    if requirements_file:
        try:
            text = Path(requirements_file).read_text()
        except OSError as e:
            raise ConfigError(f"--{installer} {requirements_file}: cannot read it ({e.strerror})") from e
        reqs = [line.split("#")[0].strip() for line in text.splitlines()]
        reqs = [r for r in reqs if r]
    else:
        reqs = requirements("ray")
    if not reqs:
        raise ConfigError(f"--{installer}: no requirements to install (give a requirements file)")
    return {installer: reqs}


def submit_job(c: JobSubmissionClient, wait_s: float = 120.0, **job: Any) -> str:
    """``c.submit_job(**job)``, retried while the head says it has no job agent yet (right
    after ``ray start``, and slowly on a busy head: a 500 that says to try again later).

    An agent that never comes is most often a second Ray on the head's machine: both agents
    want port 52365, and the head's loses; the error after ``wait_s`` says so."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return c.submit_job(**job)
        except RuntimeError as e:
            if "try again later" not in str(e):
                raise
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{e} (for {wait_s:.0f} s: the head's job agent never came up; if another Ray "
                    "runs on the head's machine, their agents both want port 52365: start the head "
                    "with --dashboard-agent-listen-port PORT)"
                ) from None
            time.sleep(1.0)


def _wait_ended(c: JobSubmissionClient, job_id: str, timeout_s: float) -> JobStatus:
    deadline = time.monotonic() + timeout_s
    while (state := c.get_job_status(job_id)) not in TERMINAL_STATES:
        if time.monotonic() > deadline:
            c.stop_job(job_id)
            raise ConfigError(f"preflight: the cluster did not run it within {timeout_s:g} s ({state.value})")
        time.sleep(0.25)
    return state


def preflight(
    c: JobSubmissionClient, python: str, runtime_env: dict, needs: Needs, timeout_s: float = 600.0
) -> str:
    """Runs :data:`treesearch.preflight.PROBE` as a tiny Ray job with the interpreter and
    runtime env the real job will have. Returns a one-line summary of what it found; raises
    ConfigError with the first shortfall (one line, with its fix)."""
    job = submit_job(
        c,
        entrypoint=f"{shlex.quote(python)} -c {shlex.quote(PROBE)} {shlex.quote(needs.as_json())}",
        runtime_env=runtime_env,
        submission_id=f"treesearch-preflight-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(3).hex()}",
    )
    try:
        _wait_ended(c, job, timeout_s)
        log = c.get_job_logs(job)
        report = parse(log)
        if report is None:  # the interpreter did not even start, or the runtime env failed
            lines = [line.strip() for line in log.splitlines() if line.strip()]
            message = (c.get_job_info(job).message or "").strip().splitlines()
            cause = last_error_line(log) or (lines[-1] if lines else message[0] if message else "no output")
            raise ConfigError(f"preflight: the cluster cannot run {python}: {cause}")
    finally:
        with contextlib.suppress(Exception):  # the probe leaves no entry in `ray job list`
            c.delete_job(job)
    found = problems(report, needs, {"treesearch": treesearch.__version__, "ray": ray.__version__})
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise ConfigError(f"preflight: {found[0]}{more}")
    return f"preflight ok: python {report['version']} at {report['python']}, ray {report['modules']['ray']}"


def submit(
    config: str,
    address: str,
    out: str,
    overrides: Sequence[str] = (),
    name: str | None = None,
    python: str = "python",
    installer: str | None = None,
    requirements_file: str | None = None,
    check: bool = True,
    say: Callable[[str], None] = lambda line: None,
) -> str:
    """Submits a run of ``config``; returns the job id. ``python``: the entrypoint's
    interpreter on the cluster; ``installer`` (``pip`` / ``uv``): install treesearch[ray]'s
    requirements (or ``requirements_file``'s) for the job; ``check``: run :func:`preflight`
    first. ``say`` gets the one line that echoes everything set."""
    cfg = load_config(config, overrides)
    sections = typed_sections(cfg)  # every field in range; models and data are checked on the cluster
    if not is_uri(out) and not Path(out).is_absolute():
        raise ConfigError(f"--out {out}: give an absolute path (on the cluster) or a URI")
    env_packages = packages(installer, requirements_file)
    c = client(address)
    stage = Path(tempfile.mkdtemp(prefix="treesearch-job-"))
    try:
        for pkg in (treesearch, actors):
            src = Path(pkg.__file__).parent
            shutil.copytree(src, stage / src.name, ignore=shutil.ignore_patterns("__pycache__"))
        (stage / "job.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        runtime_env = {"working_dir": str(stage), **env_packages}
        checked = preflight(c, python, runtime_env, cluster_needs(sections)) if check else "no preflight"
        run = "-m treesearch.cli run job.yaml --address auto --resume --out"
        entrypoint = f"{shlex.quote(python)} {run} {shlex.quote(out)}"
        installs = "".join(f", {k} {len(v)} requirements" for k, v in env_packages.items())
        say(
            f"submit: entrypoint {entrypoint}; runtime_env working_dir (treesearch "
            f"{treesearch.__version__}, actors, job.yaml){installs}; address {address}; {checked}"
        )
        stem = name or Path(config).stem
        return submit_job(
            c,
            entrypoint=entrypoint,
            runtime_env=runtime_env,
            submission_id=f"treesearch-{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{stage.name[-6:]}",
            metadata={"treesearch_out": out, "treesearch_config": Path(config).name},
        )
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def snapshot(address: str, job_id: str) -> tuple[str, bool]:
    """The job's state; below it, once the run has started, its live figures and each
    replica's load (the run dir's ``status.json``, read where the job's metadata says the run
    dir is). Second: whether the job has ended."""
    c = client(address)
    info = c.get_job_info(job_id)
    state = str(info.status.value)
    ended = info.status in TERMINAL_STATES
    lines = [state, *why(c, job_id, state, info.message)]
    out = (info.metadata or {}).get("treesearch_out")
    if out:
        # not started yet, or not readable from here
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            lines.append(describe_status(json.loads(read_text(out, "status.json"))))
    return "\n".join(lines), ended


def why(c: JobSubmissionClient, job_id: str, state: str, message: str | None) -> list[str]:
    """A FAILED / STOPPED job's reason lines (Ray's message, the log's last error, a hint)."""
    if state not in ("FAILED", "STOPPED"):
        return []
    try:
        log = c.get_job_logs(job_id)
    except Exception:  # the logs may be gone with their node; Ray's message remains
        log = ""
    return explain(state, message, log)


def status(address: str, job_id: str) -> str:
    return snapshot(address, job_id)[0]


def logs(address: str, job_id: str, follow: bool = False) -> None:
    c = client(address)
    if not follow:
        sys.stdout.write(c.get_job_logs(job_id))
        return

    async def tail() -> None:
        async for chunk in c.tail_job_logs(job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    asyncio.run(tail())


def stop(address: str, job_id: str, wait_s: float = 60.0) -> str:
    c = client(address)
    c.stop_job(job_id)
    deadline = time.time() + wait_s
    while time.time() < deadline:
        state = c.get_job_status(job_id)
        if state in TERMINAL_STATES:
            return str(state.value)
        time.sleep(0.5)
    return str(c.get_job_status(job_id).value)


def results(address: str, job_id: str) -> tuple[str, bool]:
    """The job's summary; while it runs (or if it failed), a partial one marked as such. A
    FAILED / STOPPED job's text starts with why. Second: whether the job failed or stopped."""
    c = client(address)
    info = c.get_job_info(job_id)
    out = (info.metadata or {}).get("treesearch_out")
    if not out:
        raise ConfigError(f"job {job_id} was not submitted by treesearch (no run dir in its metadata)")
    state = str(info.status.value)
    reasons = why(c, job_id, state, info.message)
    try:
        text = results_text(out, state)
    except (ConfigError, OSError) as e:  # nothing finished (or the run dir is not readable here)
        if not reasons:
            raise
        text = str(e).splitlines()[0]
    if reasons:
        return "\n".join([f"job {job_id} {state}", *reasons, text]), True
    return text, False
