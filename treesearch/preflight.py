"""What a cluster job needs from the cluster's Python, asked before the job is submitted.

``treesearch submit`` runs :data:`PROBE` with the interpreter and runtime env the job will use
(a tiny Ray job: ``actors.jobs.preflight``). The probe uses only the standard library, so it
runs on any Python, and prints one line, ``TREESEARCH_PREFLIGHT {json}``:

* ``python``, ``version``: the interpreter and its version;
* ``treesearch``: the version of the ``treesearch`` it imports (the one shipped with the job),
  or null; ``missing``: the module a ``treesearch`` import could not find; ``error``: any other
  import failure, one line;
* ``modules``: ``{module: version or null}`` for Ray and each module the config's backends need;
* ``gpus``: the cluster's GPUs (only when the config asks for some).

:func:`problems` compares that report with what the client has and the config needs, and says
each mismatch in one line with its fix. Nothing here imports Ray.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

MARK = "TREESEARCH_PREFLIGHT "

# Runs as `python -c PROBE NEEDS_JSON` in the job's working dir (the shipped packages).
PROBE = r"""
import importlib.util, json, sys
need = json.loads(sys.argv[1])
report = {"python": sys.executable, "version": sys.version.split()[0], "treesearch": None,
          "missing": None, "error": None, "modules": {}, "gpus": None}
try:
    import importlib.metadata as md
    dists = md.packages_distributions()
except Exception:
    md, dists = None, {}
try:
    import treesearch.cli, actors.plane
    report["treesearch"] = getattr(treesearch, "__version__", None)
except ModuleNotFoundError as e:
    report["missing"] = e.name
except Exception as e:
    report["error"] = (type(e).__name__ + ": " + str(e)).splitlines()[0]
for name in ["ray"] + need["modules"]:
    version = None
    if importlib.util.find_spec(name) is not None:
        version = "?"
        for dist in dists.get(name, [name]):
            try:
                version = md.version(dist)
                break
            except Exception:
                pass
    report["modules"][name] = version
if need["gpus"] and report["modules"]["ray"]:
    try:
        cluster = importlib.import_module("ray")  # the cluster's Ray, on the cluster
        cluster.init(address="auto", logging_level="ERROR", log_to_driver=False)
        report["gpus"] = cluster.cluster_resources().get("GPU", 0.0)
    except Exception as e:
        report["error"] = report["error"] or "ray.init: " + str(e).splitlines()[0]
print("TREESEARCH_PREFLIGHT " + json.dumps(report), flush=True)
"""

FIX = "submit with --python PATH (an interpreter with treesearch[ray] installed) or --pip"


@dataclass(frozen=True)
class Needs:
    """What a job needs on the cluster.

    Attributes:
      modules: importable module names its backends need (e.g. ``vllm``, ``transformers``).
      gpus: GPUs its pools ask for, all replicas together.
    """

    modules: tuple[str, ...] = ()
    gpus: float = 0.0

    def as_json(self) -> str:
        return json.dumps({"modules": list(self.modules), "gpus": self.gpus})


def parse(log: str) -> dict | None:
    """The probe's report in a job's log, or None where it printed none."""
    for line in reversed(log.splitlines()):
        if line.startswith(MARK):
            try:
                return json.loads(line[len(MARK) :])
            except ValueError:
                return None
    return None


def problems(report: dict, needs: Needs, client: dict[str, str]) -> list[str]:
    """Each way ``report`` (the cluster's Python) falls short, one line with its fix.

    ``client``: this side's versions, ``{"treesearch": ..., "ray": ...}``."""
    python = f"the cluster's python ({report.get('python')}, {report.get('version')})"
    if report.get("missing"):
        return [f"{python} cannot import {report['missing']}, which treesearch needs: {FIX}"]
    if report.get("error") and report.get("treesearch") is None:
        return [f"{python} cannot import treesearch: {report['error']}: {FIX}"]
    found: list[str] = []
    if report.get("treesearch") != client["treesearch"]:
        found.append(
            f"{python} imports treesearch {report.get('treesearch')}, not the submitted "
            f"{client['treesearch']} (an installed copy shadows it?): remove it from the job's path"
        )
    modules = report.get("modules") or {}
    if modules.get("ray") != client["ray"]:
        have = modules.get("ray") or "no ray"
        found.append(
            f"{python} has {have}, this client ray {client['ray']}: install "
            f"ray[default,serve]=={client['ray']} there, or submit with --pip"
        )
    for module in needs.modules:
        if not modules.get(module):
            found.append(
                f"{python} cannot import {module}, which the config's backends need: install it "
                "there (e.g. treesearch[vllm] on GPU nodes), or submit with --python / --pip REQUIREMENTS"
            )
    if needs.gpus > 0 and report.get("gpus") is not None and report["gpus"] < needs.gpus:
        found.append(
            f"the cluster has {report['gpus']:g} GPUs and the config asks for {needs.gpus:g}: lower "
            "resources.replicas / num_gpus, or --no-preflight where an autoscaler adds GPU nodes"
        )
    return found


def requirements(extra: str = "ray") -> list[str]:
    """The pip requirements of ``treesearch[extra]`` as installed here (what ``--pip`` sends:
    the package's own code travels with the job, its dependencies are installed for it)."""
    from importlib.metadata import PackageNotFoundError, requires

    try:
        listed = requires("treesearch") or []
    except PackageNotFoundError:  # running from a checkout that was never installed
        return []
    out = []
    for line in listed:
        spec, _, marker = line.partition(";")
        if not marker.strip() or marker.replace(" ", "").replace("'", '"') == f'extra=="{extra}"':
            out.append(spec.strip())
    return sorted(set(out))
