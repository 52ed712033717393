"""The math task through the CLI: config errors with exit 2, and the shipped GPU configs'
placeholder models (a math run with a Math-Shepherd PRM through the CLI, on the real stack, is
``tests/test_progress.py``'s vLLM run)."""

from treesearch.cli import main
from treesearch.config import load_config

from .conftest import math_overrides as _overrides


def test_math_config_errors_exit_2(tmp_path, models, dataset, capsys):
    over = _overrides(models, dataset)
    cases = [
        ([f"task.path={tmp_path / 'missing.jsonl'}"], "dataset not found"),
        (["task.fields={answer: sol}"], "task.fields.answer: no column 'sol'"),
        (["task.fields={answr: solution}"], "task.fields: unknown role(s) ['answr']"),
    ]
    cfg_file = tmp_path / "job.yaml"
    cfg_file.write_text("{}\n")
    for extra, message in cases:
        args = [x for o in [*over, *extra] for x in ("--set", o)]
        capsys.readouterr()
        assert main(["run", str(cfg_file), *args, "--out", str(tmp_path / "o"), "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_gpu_math_configs_load_and_name_their_placeholder_models(tmp_path, capsys):
    from .test_cli import CONFIGS

    configs = sorted((CONFIGS / "math").glob("*.yaml"))
    assert {c.stem for c in configs} == {
        f"{pair}-{algo}" for pair in ("qwen", "llama-shepherd") for algo in ("beam", "best_of_n", "mcts")
    }
    for c in configs:
        cfg = load_config(c)
        assert cfg.task.name == "math" and cfg.generator["backend"] == "vllm"
        capsys.readouterr()
        assert main(["run", str(c), "--out", str(tmp_path / c.stem), "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"error: generator.model: model directory not found: {cfg.generator['model']}"]
