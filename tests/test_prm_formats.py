"""PRM formats: inputs built as each model card prescribes, and transformers scores read at
the right positions (checked against a direct forward pass)."""

import asyncio

import pytest
import torch

from actors.prm import PRMSpec, TransformersPRMWorker
from treesearch.models.tiny import DEFAULT_CHAT_TEMPLATE, build_char_tokenizer, build_tiny_llama
from treesearch.prm import MathShepherdFormat, OutcomeRMFormat, PRMFormatError, QwenPRMFormat
from treesearch.prm.qwen_prm import QWEN_SYSTEM
from treesearch.protocol import ScoreRequest

SYMBOLS = "0123456789+-*/=() left:\nabcdefghijkmnopqrsuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ|.,?\\{}"
PROMPT = "4 5 6 10\n"
STEPS = ("10 - 4 = 6 (left: 5 6 6)", "6 * 5 = 30 (left: 6 30)")


def test_math_shepherd_input_is_the_model_cards():
    fmt = MathShepherdFormat()
    # card: input_for_prm = f"{question} {output}", output = "step ки\nstep ки"
    assert fmt.text(PROMPT, STEPS) == "4 5 6 10 10 - 4 = 6 (left: 5 6 6) ки\n6 * 5 = 30 (left: 6 30) ки"
    assert fmt.text(PROMPT, ("a ки b",)) == "4 5 6 10 a  b ки"  # tags inside steps are removed


@pytest.fixture(scope="module")
def qwen_model(tmp_path_factory):
    tok = build_char_tokenizer(SYMBOLS, added_tokens=["<extra_0>"], chat_template=DEFAULT_CHAT_TEMPLATE)
    return build_tiny_llama(tmp_path_factory.mktemp("qwen") / "m", tok, head="token_classification"), tok


def test_qwen_prm_input_and_scores(qwen_model):
    path, tok = qwen_model
    fmt = QwenPRMFormat()
    messages = [  # exactly the card's construction
        {"role": "system", "content": QWEN_SYSTEM},
        {"role": "user", "content": PROMPT.strip()},
        {"role": "assistant", "content": "<extra_0>".join(STEPS) + "<extra_0>"},
    ]
    card = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert fmt.text(tok, PROMPT, STEPS) == card
    worker = TransformersPRMWorker(PRMSpec("qwen_prm", model=str(path), dtype="float32"))
    (res,) = asyncio.run(worker.score([ScoreRequest("p", 1, PROMPT, STEPS)]))
    ids = torch.tensor([tok.encode(card, add_special_tokens=False)])
    with torch.no_grad():
        logits = worker.model(input_ids=ids).logits[0]
    sep = tok.convert_tokens_to_ids("<extra_0>")
    want = logits[ids[0] == sep].softmax(-1)[:, 1].tolist()  # card's make_step_rewards
    assert res.step_scores == pytest.approx(want, abs=1e-6) and len(want) == 2
    assert res.tokens == ids.shape[1]


def test_qwen_prm_needs_a_chat_template_and_separator(tmp_path):
    with pytest.raises(PRMFormatError, match="separator"):
        QwenPRMFormat().validate(build_char_tokenizer(SYMBOLS, chat_template=DEFAULT_CHAT_TEMPLATE))
    with pytest.raises(PRMFormatError, match="chat template"):
        QwenPRMFormat().validate(build_char_tokenizer(SYMBOLS, added_tokens=["<extra_0>"]))


def test_outcome_rm_scores_every_prefix(tmp_path):
    tok = build_char_tokenizer()
    path = build_tiny_llama(tmp_path / "orm", tok, head="sequence_classification", num_labels=1)
    worker = TransformersPRMWorker(PRMSpec("outcome_rm", model=str(path), dtype="float32"))
    (res,) = asyncio.run(worker.score([ScoreRequest("p", 1, PROMPT, STEPS)]))
    want = []
    for i in (1, 2):
        text = PROMPT + "\n".join(STEPS[:i]) + "\n"
        with torch.no_grad():
            want.append(
                float(torch.sigmoid(worker.model(input_ids=torch.tensor([tok.encode(text)])).logits[0, 0]))
            )
    assert res.step_scores == pytest.approx(want, abs=1e-6)
    assert res.tokens == sum(len(r.ids) for r in OutcomeRMFormat().rows(tok, PROMPT, STEPS))


def test_math_shepherd_batched_rows_equal_single_rows(tmp_path):
    tok = build_char_tokenizer(added_tokens=["ки"])
    path = build_tiny_llama(tmp_path / "ms", tok)
    worker = TransformersPRMWorker(PRMSpec("math_shepherd", model=str(path), dtype="float32"))
    reqs = [ScoreRequest("p", i, PROMPT, STEPS[: 1 + i % 2]) for i in range(5)]
    batched = asyncio.run(worker.score(reqs))
    single = [asyncio.run(worker.score([r]))[0] for r in reqs]
    for b, s in zip(batched, single, strict=True):  # right padding does not change scores
        assert b.step_scores == pytest.approx(s.step_scores, abs=1e-5) and b.tokens == s.tokens
