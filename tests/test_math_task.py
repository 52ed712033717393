"""The math task: answer extraction and equivalence (hand-written cases), data loading errors,
prompts and PRM inputs byte for byte as the model cards prescribe, and every algorithm through
real vLLM + transformers PRM actors on tiny chat models the test builds."""

import json

import pytest

from actors.plane import ray_plane
from treesearch.config import load_config
from treesearch.job import resolve
from treesearch.prm.math_shepherd import MathShepherdFormat
from treesearch.prm.qwen_prm import QwenPRMFormat
from treesearch.runner import run_job
from treesearch.tasks.answers import answers_equal, extract_answer, extract_boxed, normalize
from treesearch.tasks.math import MathTask, MathTaskError
from treesearch.training.tiny import build_char_tokenizer

from .conftest import CHATML, SYMBOLS
from .conftest import math_overrides as _overrides

SYS = "Please reason step by step, and put your final answer within \\boxed{}."

# (solution text, reference, expected verdict)
CASES = [
    ("so \\boxed{2}", "2", True),
    ("\\boxed{3}", "2", False),
    ("\\boxed{\\frac{1}{2}}", "\\frac12", True),
    ("\\boxed{\\frac{1}{2}}", "0.5", True),
    ("\\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}", True),
    ("\\boxed{\\tfrac{3}{4}}", "0.75", True),
    ("\\boxed{0.5}", "\\frac{1}{2}", True),
    ("\\boxed{0.50}", "0.5", True),
    ("\\boxed{0.33}", "\\frac{1}{3}", False),
    ("\\boxed{\\frac{2}{4}}", "\\frac{1}{2}", True),
    ("\\boxed{x = 3}", "3", True),
    ("\\boxed{x=3}", "3", True),
    ("\\boxed{y = -2}", "-2", True),
    ("\\boxed{5\\text{ cm}}", "5", True),
    ("\\boxed{5 \\text{ meters}}", "5", True),
    ("\\boxed{90^\\circ}", "90", True),
    ("\\boxed{90^{\\circ}}", "90", True),
    ("\\boxed{10\\%}", "10", True),
    ("\\boxed{\\$12}", "12", True),
    ("first \\boxed{1} then \\boxed{2}", "2", True),
    ("first \\boxed{1} then \\boxed{2}", "1", False),
    ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt3}{2}", True),
    ("\\boxed{\\sqrt{2}}", "\\sqrt{2}", True),
    ("\\boxed{\\sqrt{8}}", "2\\sqrt{2}", True),
    ("\\boxed{2\\sqrt{2}}", "\\sqrt{2}", False),
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("\\boxed{(1,2)}", "(1, 2)", True),
    ("\\boxed{(2,1)}", "(1, 2)", False),
    ("\\boxed{\\{1, 2\\}}", "\\{2, 1\\}", True),
    ("\\boxed{-7}", "-7", True),
    ("\\boxed{7}", "-7", False),
    ("\\boxed{1{,}000}", "1000", True),
    ("\\boxed{3.0}", "3", True),
    ("\\boxed{\\pi}", "\\pi", True),
    ("\\boxed{2\\pi}", "\\pi", False),
    ("\\boxed{x^2+1}", "1+x^2", True),
    ("\\boxed{\\frac{a}{b}}", "a/b", True),
    ("the answer is 42", "42", False),  # no box, no pattern: no answer
    ("", "1", False),
    ("\\boxed{}", "1", False),
    ("\\fbox{4}", "4", True),
    ("\\boxed{\\boxed{6}}", "6", True),
    ("\\boxed{{12}}", "12", True),
    ("\\boxed{\\text{(B)}}", "\\text{(B)}", True),
    ("\\boxed{\\text{(C)}}", "\\text{(B)}", False),
]


@pytest.mark.parametrize(("text", "reference", "verdict"), CASES)
def test_answer_extraction_and_equivalence(text, reference, verdict):
    assert answers_equal(extract_answer(text), reference) is verdict


def test_extraction_details():
    assert len(CASES) >= 40
    assert extract_boxed("a \\boxed{\\frac{1}{\\sqrt{2}}} b") == "\\frac{1}{\\sqrt{2}}"
    assert extract_boxed("\\boxed{unclosed") is None
    assert extract_answer("The answer is 42.", r"answer is (-?\d+)") == "42"
    assert extract_answer("\\boxed{7} and answer is 42", r"answer is (\d+)") == "7"  # a box wins
    assert normalize("\\dfrac{1}{2}") == normalize("\\frac{1}{2}") == "\\frac{1}{2}"
    assert normalize("x = 3") == normalize(" 3. ") == "3"


def test_prompt_is_the_chat_template_of_the_card(tokenizers, dataset):
    policy, _ = tokenizers
    task = MathTask(str(dataset), policy, {"answer": "solution", "id": "uid"})
    p = task.problems()[0]
    # Qwen2.5-Math-Instruct: system prompt + question, ChatML, generation prompt added
    assert p.prompt == (f"<|im_start|>system\n{SYS}<|im_end|>\n<|im_start|>user\nWhat is 1+1?<|im_end|>\n"
                        "<|im_start|>assistant\n")  # fmt: skip
    assert p.id == "a" and p.data == {"question": "What is 1+1?", "reference": "2"}
    assert task.is_terminal(p, ["so", "\\boxed{2}"]) and not task.is_terminal(p, ["so 2"])
    assert task.is_correct(p, ["1+1 is", "\\boxed{2}"]) and task.extract_answer(p, ["\\boxed{x = 2}"]) == "2"


def test_prm_inputs_match_the_model_cards(tokenizers):
    _, prm = tokenizers
    q, steps = "What is 1+1?", ("1+1 equals 2.", "So \\boxed{2}.")
    # Math-Shepherd card: f"{question} {output}", steps separated by newlines, each tagged " ки"
    assert MathShepherdFormat().text(q, steps) == "What is 1+1? 1+1 equals 2. ки\nSo \\boxed{2}. ки"
    # Qwen2.5-Math-PRM card: system / user / assistant = steps joined and ended by <extra_0>
    assert QwenPRMFormat().text(prm, q, steps) == (
        f"<|im_start|>system\n{SYS}<|im_end|>\n<|im_start|>user\nWhat is 1+1?<|im_end|>\n"
        "<|im_start|>assistant\n1+1 equals 2.<extra_0>So \\boxed{2}.<extra_0><|im_end|>\n"
    )
    (row,) = QwenPRMFormat().rows(prm, q, steps)
    assert len(row.positions) == 2 and all(
        row.ids[i] == prm.convert_tokens_to_ids("<extra_0>") for i in row.positions
    )


def test_data_errors_are_clear(tokenizers, dataset, tmp_path):
    policy, _ = tokenizers
    with pytest.raises(MathTaskError, match="dataset not found"):
        MathTask(str(tmp_path / "none.jsonl"), policy).problems()
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(MathTaskError, match="dataset is empty"):
        MathTask(str(tmp_path / "empty.jsonl"), policy).problems()
    with pytest.raises(
        MathTaskError, match=r"task.fields.answer: no column 'answer' .*found: problem, solution, uid"
    ):
        MathTask(str(dataset), policy).problems()
    no_template = build_char_tokenizer(SYMBOLS)
    with pytest.raises(MathTaskError, match="no chat template"):
        MathTask(str(dataset), no_template)
    assert MathTask(str(dataset), no_template, {"answer": "solution"}, chat_template=CHATML).problems()


ALGOS = {
    "best_of_n": "{name: best_of_n, n: 3, wave: 3, selection: weighted_vote}",
    "beam": "{name: beam, width: 2, expansions: 2}",
    "dvts": "{name: dvts, n_subtrees: 2, expansions: 2}",
    "tot_bfs": "{name: tot_bfs, breadth: 2, samples: 2}",
    "tot_dfs": "{name: tot_dfs, samples: 2, threshold: 0.0}",
    "mcts": "{name: mcts, simulations: 4, parallel: 2, expansions: 2}",
}


@pytest.fixture(scope="module")
def stack(models, tmp_path_factory, ray_cluster, uses_vllm):
    data = tmp_path_factory.mktemp("data") / "m.jsonl"
    data.write_text(json.dumps({"problem": "What is 1+1?", "solution": "2", "uid": "a"}) + "\n")
    with ray_plane(resolve(load_config(None, _overrides(models, data)))) as plane:
        yield plane


@pytest.mark.parametrize("algo", sorted(ALGOS))
def test_every_algorithm_on_math_with_vllm_and_qwen_prm(tmp_path, models, dataset, stack, algo):
    cfg = load_config(None, [*_overrides(models, dataset), f"algorithm={ALGOS[algo]}"])
    summary = run_job(resolve(cfg), tmp_path / algo, stack.local, progress=False)
    assert summary["n_problems"] == 3 and summary["ledger"]["prm_calls"] > 0
    assert summary["ledger"]["policy_generated_tokens"] <= 3 * 300
    rows = [json.loads(x) for x in (tmp_path / algo / "results.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == ["a", "b", "c"]


def test_parquet_dataset(tokenizers, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    policy, _ = tokenizers
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"question": ["What is 2+2?"], "final": ["4"]}), path)
    (p,) = MathTask(str(path), policy, {"question": "question", "answer": "final"}).problems()
    assert p.id == "0" and p.data == {"question": "What is 2+2?", "reference": "4"}
    assert p.prompt.endswith("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
