"""Shared fixtures, and the test tiers.

A test's tier comes from the fixtures it uses (no marker to forget): one that starts Ray
(``ray_cluster``, ``uses_ray`` for a subprocess that does, and the fixtures built on them) is
marked ``ray``; vLLM engines ``vllm``; Chromium ``browser``; a long run with none of these
(an install, a fuzz, a subprocess run) ``slow``. ``make test-fast`` runs what has none of the
four; ``make test`` runs everything, on two pytest-xdist workers that each take whole files
(one Ray per module), except that the files starting Ray heads of their own for jobs and faults
(``OWN_HEADS``) form one group, run one after another on one worker.
"""

import json
import string
from pathlib import Path

import pytest

from treesearch.training.tiny import build_char_tokenizer, build_tiny_llama

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TOT_CSV = SHARED / "data" / "game24" / "24.csv"

# fixture -> the markers a test that uses it gets (directly or through another fixture)
TIERS = {
    "ray_cluster": ("ray",),
    "uses_ray": ("ray",),
    "uses_vllm": ("vllm", "ray"),
    "uses_browser": ("browser",),
    "takes_long": ("slow",),
}


# Each starts a Ray head of its own and times things against it (a job agent's start, faults and
# their deadlines): one after another, they do not compete for the two cores.
OWN_HEADS = {"test_jobs.py", "test_chaos.py"}
# Files run most expensive first (by the tiers of their tests), so that on two workers the short
# ones fill the end; within a file, the order is the file's.
COST = {"vllm": 0, "ray": 1, "browser": 2, "slow": 2}


def pytest_collection_modifyitems(config, items):
    for item in items:
        for name in dict.fromkeys(m for f in item.fixturenames for m in TIERS.get(f, ())):
            item.add_marker(name)
    rank: dict[Path, int] = {}
    for item in items:
        costs = [COST[m.name] for m in item.iter_markers() if m.name in COST]
        heads = -1 if item.path.name in OWN_HEADS else 3
        rank[item.path] = min(rank.get(item.path, 3), heads, *costs)
    items.sort(key=lambda item: (rank[item.path], str(item.path)))  # stable: a file's order kept


def pytest_configure(config):
    if config.pluginmanager.hasplugin("xdist"):  # the dev extra, and not -p no:xdist
        config.pluginmanager.register(_Scheduler(), "files-and-own-heads")


class _Scheduler:
    """Under ``--dist loadfile``: whole files to a worker, the ``OWN_HEADS`` files as one unit."""

    def pytest_xdist_make_scheduler(self, config, log):
        if config.getvalue("dist") != "loadfile":
            return None
        from xdist.scheduler import LoadFileScheduling

        class FilesAndOwnHeads(LoadFileScheduling):
            def _split_scope(self, nodeid: str) -> str:
                file = super()._split_scope(nodeid)
                return "own-heads" if Path(file).name in OWN_HEADS else file

        return FilesAndOwnHeads(config, log)


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray per test module (2 CPUs, no dashboard), shut down after it."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def uses_ray():
    """The test starts Ray another way (a subprocess, a head of its own, 8 fake GPUs)."""


@pytest.fixture(scope="module")
def uses_vllm():
    """The test starts vLLM engines (and Ray under them)."""


@pytest.fixture(scope="module")
def uses_browser():
    """The test drives Chromium."""


@pytest.fixture(scope="module")
def takes_long():
    """Seconds of work with no Ray, vLLM or browser: an install, a fuzz, a subprocess run."""


@pytest.fixture
def tot_csv() -> Path:
    if not TOT_CSV.is_file():  # CI and developer machines have ../shared beside the checkout
        pytest.fail(f"ToT's 24.csv not found at {TOT_CSV} (../shared must sit beside the repo)")
    return TOT_CSV


# ---- math task: tiny chat models (ChatML template, PRM special tokens) and a small dataset
SYMBOLS = string.ascii_letters + string.digits + " \n.,;:!?+-*/=()[]{}<>^_'\"|\\$%&#~"
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizers():
    policy = build_char_tokenizer(SYMBOLS, added_tokens=["<|im_start|>", "<|im_end|>"], chat_template=CHATML)
    prm = build_char_tokenizer(SYMBOLS, added_tokens=["<|im_start|>", "<|im_end|>", "<extra_0>", "ки"],
                               chat_template=CHATML)  # fmt: skip
    return policy, prm


@pytest.fixture
def dataset(tmp_path):
    rows = [{"problem": "What is 1+1?", "solution": "2", "uid": "a"},
            {"problem": "What is half of 1?", "solution": "\\frac{1}{2}", "uid": "b"},
            {"problem": "Solve x+2=5.", "solution": "3", "uid": "c"}]  # fmt: skip
    path = tmp_path / "math.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizers):
    policy_tok, prm_tok = tokenizers
    root = tmp_path_factory.mktemp("math-models")
    return (
        build_tiny_llama(root / "policy", policy_tok, seed=3),
        build_tiny_llama(root / "qwen-prm", prm_tok, head="token_classification", seed=4),
        build_tiny_llama(root / "shepherd-prm", prm_tok, seed=5),
    )


def math_overrides(models, dataset, prm="qwen_prm"):
    policy, qwen, shepherd = models
    return [
        "task.name=math",
        f"task.path={dataset}",
        "task.fields={answer: solution, id: uid}",
        "task.max_steps=3",
        f"generator={{backend: vllm, model: {policy}, dtype: float32, gpu_memory_utilization: 0.1, "
        "enforce_eager: true, max_model_len: 512, max_step_tokens: 16, add_special_tokens: false, "
        "resources: {num_cpus: 0}}",
        f"prm={{backend: {prm}, model: {qwen if prm == 'qwen_prm' else shepherd}, "
        "resources: {num_cpus: 0}}",
        "budget.generated_tokens=300",
    ]
