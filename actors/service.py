"""treesearch as a Ray Serve application: warm pools, shared by every search ingress replica.

Two deployments:

* :class:`Pools` (one replica) starts the generator and PRM replicas of every distinct
  ``generator:`` / ``prm:`` pair the profiles name, once, and hands their handles out;
* :class:`SearchIngress` (``num_replicas`` or autoscaled) is the OpenAI-compatible FastAPI app
  (:mod:`treesearch.http`). Each replica runs one :class:`treesearch.service.SearchService`:
  one engine per profile over its own clients of the same pool replicas (so the pools route
  around load from every ingress replica), admission, deadlines, its run dir.

``treesearch serve`` deploys it on a local Ray (or one it joins) and prints one ready line; a
RayService deploys :func:`build_app` from ``serveConfigV2`` (``k8s/service/``). Request
latency, the admission queue and rejected requests are exported as Prometheus metrics
(``treesearch_request_seconds``, ``treesearch_admission``, ``treesearch_rejected_requests``).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ray
from ray import serve
from ray.serve.handle import DeploymentHandle

from actors.load import LoadMonitor
from actors.replicas import Replicas, clients, init_ray, start_replicas
from treesearch.config import JobConfig
from treesearch.errors import ConfigError
from treesearch.job import Job, resolve
from treesearch.schema import build
from treesearch.service import SearchService, ServiceOptions

APP = "treesearch"
REQUEST_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 150, 600]  # seconds
# name -> (kind, tag keys, description): what the ingress exports (the Grafana dashboard charts them)
SERVICE_METRICS = {
    "treesearch_request_seconds": ("histogram", ("model",), "seconds from admission to a search's answer"),
    "treesearch_admission": ("gauge", ("state",), "searches running and waiting for a slot"),
    "treesearch_rejected_requests": ("counter", (), "requests refused: the admission queue was full"),
}


def pool_key(cfg: JobConfig) -> str:
    """Profiles with the same ``generator:`` and ``prm:`` sections share one pair of pools."""
    return json.dumps([cfg.generator, cfg.prm], sort_keys=True, default=str)


def jobs_of(profiles: dict[str, dict[str, Any]]) -> dict[str, Job]:
    """Each profile's config (a plain mapping, as loaded) resolved."""
    return {name: resolve(build(JobConfig, data, "")) for name, data in profiles.items()}


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
class Pools:
    """The replicas of every pool pair the profiles name, started once (this replica owns them)."""

    def __init__(self, profiles: dict[str, dict[str, Any]]):
        self.replicas: dict[str, Replicas] = {}
        for job in jobs_of(profiles).values():
            key = pool_key(job.cfg)
            if key not in self.replicas:
                self.replicas[key] = start_replicas(job)

    async def get(self, key: str) -> Replicas:
        return self.replicas[key]

    async def all(self) -> list[Replicas]:
        return list(self.replicas.values())

    def __del__(self) -> None:
        for r in getattr(self, "replicas", {}).values():
            r.shutdown()


class Metrics:
    """The ingress's Prometheus metrics (:data:`SERVICE_METRICS`; Ray prefixes ``ray_``)."""

    def __init__(self) -> None:
        from ray.util.metrics import Counter, Gauge, Histogram

        def spec(name: str) -> dict[str, Any]:
            _, tags, text = SERVICE_METRICS[name]
            return {"name": name, "description": text, "tag_keys": tags}

        self.latency = Histogram(boundaries=REQUEST_BUCKETS, **spec("treesearch_request_seconds"))
        self.admission = Gauge(**spec("treesearch_admission"))
        self.rejected = Counter(**spec("treesearch_rejected_requests"))

    def done(self, model: str, seconds: float) -> None:
        self.latency.observe(seconds, {"model": model})

    def queue(self, running: int, waiting: int) -> None:
        self.admission.set(running, {"state": "running"})
        self.admission.set(waiting, {"state": "waiting"})

    def refused(self) -> None:
        self.rejected.inc()


@serve.deployment(
    max_ongoing_requests=10_000, graceful_shutdown_timeout_s=30, ray_actor_options={"num_cpus": 0}
)
@serve.ingress()
class SearchIngress:
    """The OpenAI-compatible search endpoint (see module docstring).

    Args:
      profiles: model id -> its config, as loaded (a plain mapping).
      pools: the :class:`Pools` deployment.
      options: :class:`treesearch.service.ServiceOptions` fields.
      api_key: required as ``Authorization: Bearer KEY`` (None: no key).
      out: the service's run dir; each ingress replica writes its own subdirectory.
    """

    async def __init__(
        self,
        profiles: dict[str, dict[str, Any]],
        pools: DeploymentHandle,
        options: dict[str, Any],
        api_key: str | None,
        out: str | None,
    ):
        jobs = jobs_of(profiles)
        by_key = {}
        for job in jobs.values():
            key = pool_key(job.cfg)
            if key not in by_key:
                by_key[key] = clients(job, await pools.get.remote(key))
        run_dir = None
        if out is not None:
            run_dir = Path(out) / serve.get_replica_context().replica_id.unique_id
        self.api_key = api_key
        pools_of = lambda job: by_key[pool_key(job.cfg)]  # noqa: E731
        self.service = SearchService(jobs, pools_of, ServiceOptions(**options), run_dir, observer=Metrics())

    def __serve_build_asgi_app__(self) -> Any:
        from treesearch.http import make_app

        return make_app(self.service, self.api_key)


def build_app(args: dict[str, Any]) -> Any:
    """The application for ``serveConfigV2`` (``import_path: actors.service:build_app``):
    ``args``: ``profiles`` (config paths, or directories of them), ``api_key_env`` (the
    variable holding the key), ``out`` (the run dir), ``options`` (limits)."""
    profiles = load_profiles(args.get("profiles", ["configs/game24.yaml"]), args.get("set", []))
    key = os.environ.get(args["api_key_env"]) if args.get("api_key_env") else None
    return SearchIngress.bind(profiles, Pools.bind(profiles), args.get("options", {}), key, args.get("out"))


def load_profiles(paths: Sequence[str], overrides: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """Profiles from config files, or every ``*.yaml`` of a directory: model id = the file's
    stem; each checked (resolved) here, so a bad one fails before anything starts."""
    from treesearch.config import load_config

    files: list[Path] = []
    for p in map(Path, paths):
        files += sorted(p.glob("*.yaml")) if p.is_dir() else [p]
    if not files:
        raise ConfigError(f"serve: no config files in {', '.join(paths)}")
    profiles = {}
    for f in files:
        if f.stem in profiles:
            raise ConfigError(f"serve: two profiles named {f.stem!r} (a model id is a config's file name)")
        cfg = load_config(f, overrides)
        resolve(cfg)  # every check, here
        profiles[f.stem] = cfg.to_dict()
    return profiles


def _pool_handles() -> dict[str, list[Any]]:
    """Every replica of the deployed app's pools, by pool."""
    pools = serve.get_deployment_handle(Pools.name, APP).all.remote().result()
    return {"generator": [h for r in pools for h in r.generator], "PRM": [h for r in pools for h in r.prm]}


def serve_forever(
    profiles: dict[str, dict[str, Any]],
    host: str,
    port: int,
    address: str | None,
    api_key: str | None,
    out: str,
    options: dict[str, Any],
    replicas: int,
    grace_s: float,
    say: Callable[[str], None],
    stop: threading.Event | None = None,
) -> None:
    """``treesearch serve``: deploys the app, says one ready line, serves until SIGINT/SIGTERM,
    then drains the searches in flight (up to ``grace_s``) and stops."""
    import logging

    first = build(JobConfig, next(iter(profiles.values())), "")
    started = init_ray(address, first.run.ray_num_cpus, verbose=False)
    for name in ("ray.serve", "ray"):  # Serve's own INFO lines are not ours to print
        logging.getLogger(name).setLevel(logging.WARNING)
    if stop is None:
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())  # type: ignore[union-attr]
    try:
        t0 = time.perf_counter()
        serve.start(
            http_options={"host": host, "port": port},
            logging_config={"log_level": "WARNING", "enable_access_log": False},
        )
        ingress = SearchIngress.options(num_replicas=replicas, graceful_shutdown_timeout_s=grace_s)
        serve.run(
            ingress.bind(profiles, Pools.bind(profiles), options, api_key, out), name=APP, route_prefix="/"
        )
        took = time.perf_counter() - t0
        with LoadMonitor(_pool_handles(), say=say):  # a replica's death: one line of ours
            names = ", ".join(profiles)
            say(
                f"treesearch serving {names} at http://{host}:{port}/v1 (ready in {took:.0f} s; "
                f"searches written to {out}/<ingress replica>; Ctrl-C stops)"
            )
            while not stop.wait(0.5):
                pass
        say(f"stopping: draining searches in flight (at most {grace_s:.0f} s)")
        serve.delete(APP)  # the ingress replicas finish what they hold, up to the grace period
    finally:
        if started:  # a local Ray goes with Serve in it; on a cluster, Serve stays for others
            ray.shutdown()
    say("stopped")
