"""Search jobs on a Ray cluster through Ray Jobs (``ray.job_submission.JobSubmissionClient``).

``submit`` validates the config locally, stages a working dir holding the resolved config and
the ``treesearch`` / ``actors`` packages, and submits ``python -m treesearch.cli run job.yaml
--address auto --out OUT --resume`` to run with the cluster's interpreter (so a resubmitted job
pointing at the same OUT continues it). The job's metadata records OUT, so ``results`` finds
the run dir. Ray's token authentication is handled by Ray's client: the token comes from
``RAY_AUTH_TOKEN`` or Ray's default token file.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import yaml
from ray.job_submission import JobStatus, JobSubmissionClient

import actors
import treesearch
from treesearch.config import load_config
from treesearch.errors import ConfigError
from treesearch.job import typed_sections
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
    try:
        return JobSubmissionClient(address, headers=auth_headers())
    except Exception as e:  # connection, auth and version errors alike
        raise ConfigError(
            f"--address {address}: cannot reach the Ray job server: {str(e).splitlines()[0]}"
        ) from e


def submit(
    config: str, address: str, out: str, overrides: Sequence[str] = (), name: str | None = None
) -> str:
    """Submits a run of ``config``; returns the job id."""
    cfg = load_config(config, overrides)
    typed_sections(cfg)  # every field in range here; models and data are checked on the cluster
    if not is_uri(out) and not Path(out).is_absolute():
        raise ConfigError(f"--out {out}: give an absolute path (on the cluster) or a URI")
    stage = Path(tempfile.mkdtemp(prefix="treesearch-job-"))
    try:
        for pkg in (treesearch, actors):
            src = Path(pkg.__file__).parent
            shutil.copytree(src, stage / src.name, ignore=shutil.ignore_patterns("__pycache__"))
        (stage / "job.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        entrypoint = f"python -m treesearch.cli run job.yaml --address auto --resume --out {shlex.quote(out)}"
        stem = name or Path(config).stem
        return client(address).submit_job(
            entrypoint=entrypoint,
            runtime_env={"working_dir": str(stage)},
            submission_id=f"treesearch-{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{stage.name[-6:]}",
            metadata={"treesearch_out": out, "treesearch_config": Path(config).name},
        )
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def snapshot(address: str, job_id: str) -> tuple[str, bool]:
    """The job's state; below it, once the run has started, its live figures and each
    replica's load (the run dir's ``status.json``, read where the job's metadata says the run
    dir is). Second: whether the job has ended."""
    info = client(address).get_job_info(job_id)
    state = str(info.status.value)
    ended = info.status in TERMINAL_STATES
    out = (info.metadata or {}).get("treesearch_out")
    if not out:
        return state, ended
    try:
        live = json.loads(read_text(out, "status.json"))
        return f"{state}\n{describe_status(live)}", ended
    except (OSError, ValueError, KeyError, TypeError):  # not started yet, or not readable from here
        return state, ended


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


def results(address: str, job_id: str) -> str:
    """The job's summary; while it runs (or if it failed), a partial one marked as such."""
    info = client(address).get_job_info(job_id)
    out = (info.metadata or {}).get("treesearch_out")
    if not out:
        raise ConfigError(f"job {job_id} was not submitted by treesearch (no run dir in its metadata)")
    return results_text(out, str(info.status.value))
