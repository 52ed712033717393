"""k8s/ manifests validated offline against the official KubeRay CRD schemas (../shared).

The API server prunes / rejects unknown fields of a structural schema; here every object
schema that declares properties and neither ``additionalProperties`` nor
``x-kubernetes-preserve-unknown-fields`` gets ``additionalProperties: false``, so a typo fails.
"""

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml

from .conftest import SHARED

K8S = Path(__file__).resolve().parents[1] / "k8s"
CRDS = SHARED / "kuberay-crds"
KINDS = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayService": "ray.io_rayservices.yaml",
}


def _structural(schema):
    if isinstance(schema, dict):
        out = {k: _structural(v) for k, v in schema.items()}
        if out.pop("x-kubernetes-int-or-string", False):
            out.pop("type", None)
            out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_structural(x) for x in schema]
    return schema


@pytest.fixture(scope="module")
def validators():
    if not CRDS.is_dir():
        pytest.fail(f"KubeRay CRDs not found at {CRDS} (../shared must sit beside the repo)")
    out = {}
    for kind, fname in KINDS.items():
        crd = yaml.safe_load((CRDS / fname).read_text())
        (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        schema = _structural(v1["schema"]["openAPIV3Schema"])
        schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta is checked by the API server
        out[kind] = jsonschema.Draft7Validator(schema)
    return out


def _errors(validators, doc):
    assert doc["apiVersion"] == "ray.io/v1", doc["apiVersion"]
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validators[doc["kind"]].iter_errors(doc)
    ]


def _apply_json6902(doc, ops):
    doc = copy.deepcopy(doc)
    for op in ops:
        *parents, last = [int(p) if p.isdigit() else p for p in op["path"].strip("/").split("/")]
        node = doc
        for p in parents:
            node = node[p]
        if op["op"] in ("replace", "add"):
            if op["op"] == "replace" and (last not in node if isinstance(node, dict) else last >= len(node)):
                raise KeyError(f"replace of a missing path {op['path']}")
            node[last] = op["value"]
        elif op["op"] == "remove":
            del node[last]
        else:
            raise ValueError(op["op"])
    return doc


def _build(kustomization: Path):
    """The documents a kustomization yields (resources, then JSON 6902 patches by target)."""
    k = yaml.safe_load(kustomization.read_text())
    docs = []
    for res in k.get("resources", []):
        path = kustomization.parent / res
        docs += (
            _build(path / "kustomization.yaml")
            if path.is_dir()
            else list(yaml.safe_load_all(path.read_text()))
        )
    for patch in k.get("patches", []):
        t = patch["target"]
        hits = [d for d in docs if d["kind"] == t["kind"] and d["metadata"]["name"] == t["name"]]
        assert hits, f"patch target {t} matches nothing"
        for d in hits:
            docs[docs.index(d)] = _apply_json6902(d, yaml.safe_load(patch["patch"]))
    return docs


def _all_builds():
    return {str(k.parent.relative_to(K8S)): _build(k) for k in sorted(K8S.rglob("kustomization.yaml"))}


def test_the_rayservice_validates_and_deploys_our_app(validators):
    """k8s/service/rayservice.yaml: valid against the RayService CRD; its serveConfigV2 builds
    the app from actors.service:build_app with profiles that resolve here, and names the
    deployments the app has."""
    from actors.service import Pools, SearchIngress, load_profiles

    (doc,) = list(yaml.safe_load_all((K8S / "service" / "rayservice.yaml").read_text()))
    assert doc["kind"] == "RayService" and _errors(validators, doc) == []
    serve_config = yaml.safe_load(doc["spec"]["serveConfigV2"])
    (app,) = serve_config["applications"]
    assert app["import_path"] == "actors.service:build_app" and app["route_prefix"] == "/"
    assert {d["name"] for d in app["deployments"]} == {SearchIngress.name, Pools.name}
    root = Path(__file__).resolve().parents[1]
    profiles = load_profiles([str(root / p) for p in app["args"]["profiles"]], app["args"]["set"])
    assert list(profiles) == ["game24"]
    assert profiles["game24"]["generator"]["resources"]["replicas"] == 6
    head = doc["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {"containerPort": 8000, "name": "serve"} in head["ports"]
    assert any(e["name"] == app["args"]["api_key_env"] for e in head["env"])
    broken = copy.deepcopy(doc)
    broken["spec"]["serveConfigv2"] = broken["spec"].pop("serveConfigV2")
    assert any("serveConfigv2" in e for e in _errors(validators, broken))


def test_every_manifest_and_overlay_is_valid(validators):
    builds = _all_builds()
    assert set(builds) == {"base", "overlays/4x8"}
    for name, docs in builds.items():
        assert {d["kind"] for d in docs} == {"RayCluster", "RayJob"}, name
        for doc in docs:
            assert _errors(validators, doc) == [], (name, doc["kind"])
    for f in K8S.rglob("*.yaml"):  # every plain manifest file too
        for doc in yaml.safe_load_all(f.read_text()):
            if doc and doc.get("apiVersion") == "ray.io/v1":
                assert _errors(validators, doc) == [], f


def test_cluster_shape(validators):
    for name, docs in _all_builds().items():
        (cluster,) = [d for d in docs if d["kind"] == "RayCluster"]
        spec = cluster["spec"]
        assert spec["authOptions"]["mode"] == "token"
        assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"  # dashboard stays inside
        head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
        assert "nvidia.com/gpu" not in head["resources"]["limits"]
        groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
        assert set(groups) == {"generator", "prm"}
        gpus = 0
        for role, g in groups.items():
            assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
            limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
            assert g["resources"][role] == limits["nvidia.com/gpu"]  # one Ray resource per GPU
            gpus += int(limits["nvidia.com/gpu"]) * g["maxReplicas"]
        assert gpus == {"base": 8, "overlays/4x8": 32}[name]
        (job,) = [d for d in docs if d["kind"] == "RayJob"]
        assert job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
        assert "--resume" in job["spec"]["entrypoint"]


@pytest.mark.parametrize(
    ("path", "typo"),
    [
        (("spec", "workerGroupSpecs", 0), ("replicas", "replica")),
        (("spec", "headGroupSpec"), ("serviceType", "servicetype")),
        (
            ("spec", "workerGroupSpecs", 1, "template", "spec", "containers", 0),
            ("volumeMounts", "volumeMount"),
        ),
        (("spec", "authOptions"), ("mode", "mod")),
    ],
)
def test_planted_typo_is_rejected(validators, path, typo):
    (cluster,) = [d for d in _build(K8S / "base" / "kustomization.yaml") if d["kind"] == "RayCluster"]
    doc = copy.deepcopy(cluster)
    node = doc
    for p in path:
        node = node[p]
    old, new = typo
    node[new] = node.pop(old)
    errors = _errors(validators, doc)
    assert any(new in e for e in errors), errors


def test_wrong_type_is_rejected(validators):
    (job,) = [d for d in _build(K8S / "base" / "kustomization.yaml") if d["kind"] == "RayJob"]
    doc = copy.deepcopy(job)
    doc["spec"]["backoffLimit"] = "two"
    assert any("backoffLimit" in e for e in _errors(validators, doc))


def test_grafana_dashboard_queries_only_metrics_the_replicas_export():
    """k8s/grafana/treesearch-dashboard.json: every ``ray_treesearch_*`` series a panel queries is
    one the replica actors define (Ray exports ``<name>`` with a ``ray_`` prefix, counters as
    ``<name>_total``; rates only of counters), only by the tags they set, and every metric they
    define is on the dashboard."""
    import json
    import re

    from actors.replica import BUSY_METRIC, DEPTH_METRIC, GENERATOR_METRICS, PRM_METRICS, TAGS
    from actors.service import SERVICE_METRICS

    counters = {*GENERATOR_METRICS, *PRM_METRICS, BUSY_METRIC[0]}
    gauges = {DEPTH_METRIC[0]}
    histograms: set[str] = set()
    tags = {name: TAGS for name in counters | gauges}
    for name, (kind, keys, _) in SERVICE_METRICS.items():
        {"counter": counters, "gauge": gauges, "histogram": histograms}[kind].add(name)
        tags[name] = keys
    dash = json.loads((K8S / "grafana" / "treesearch-dashboard.json").read_text())
    assert dash["uid"] and dash["schemaVersion"] >= 30
    assert [v["name"] for v in dash["templating"]["list"]] == ["datasource"]
    used = set()
    for panel in dash["panels"]:
        assert panel["title"] and set(panel["gridPos"]) == {"h", "w", "x", "y"} and panel["targets"]
        for target in panel["targets"]:
            expr = target["expr"]
            assert target["datasource"]["uid"] == "${datasource}"
            names = []
            pattern = r"\bray_(treesearch_\w+?)(_total|_bucket|_count|_sum)?\b(\{[^}]*\})?(\[[^\]]+\])?"
            for m in re.finditer(pattern, expr):
                name, suffix, labels, window = m.groups()
                kind_ok = (
                    (name in counters and suffix == "_total")
                    or (name in gauges and suffix is None)
                    or (name in histograms and suffix in ("_bucket", "_count", "_sum"))
                )
                assert kind_ok, m.group(0)
                assert (window is not None) == (suffix is not None), f"rate() of counters only: {m.group(0)}"
                for label in re.findall(r"(\w+)\s*=", labels or ""):
                    assert label in tags[name], m.group(0)
                used.add(name)
                names.append(name)
            for by in re.findall(r"by \(([^)]*)\)", expr):
                allowed = {"le"} | {t for n in names for t in tags[n]}
                assert {x.strip() for x in by.split(",")} <= allowed, expr
    assert used == counters | gauges | histograms
