"""PRM formats: inputs built as each model card prescribes, and transformers scores read at
the right positions (checked against a direct forward pass)."""

import asyncio

import pytest
import torch

from treesearch.prm import PRMFormatError
from treesearch.prm.math_shepherd import MathShepherdFormat
from treesearch.prm.outcome_rm import OutcomeRMFormat
from treesearch.prm.qwen_prm import QWEN_SYSTEM, QwenPRMFormat
from treesearch.protocol import ScoreRequest
from treesearch.training.tiny import DEFAULT_CHAT_TEMPLATE, build_char_tokenizer, build_tiny_llama

from .helpers import backend_worker

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
    worker = backend_worker("prm", backend="qwen_prm", model=str(path), dtype="float32")
    (res,) = asyncio.run(worker.score([ScoreRequest.one("p", 1, PROMPT, STEPS)]))
    ids = torch.tensor([tok.encode(card, add_special_tokens=False)])
    with torch.no_grad():
        logits = worker.model(input_ids=ids).logits[0]
    sep = tok.convert_tokens_to_ids("<extra_0>")
    want = logits[ids[0] == sep].softmax(-1)[:, 1].tolist()  # card's make_step_rewards
    assert res.scores[0] == pytest.approx(want, abs=1e-6) and len(want) == 2
    assert res.tokens == (ids.shape[1],)


def test_qwen_prm_needs_a_chat_template_and_separator(tmp_path):
    with pytest.raises(PRMFormatError, match="separator"):
        QwenPRMFormat().validate(build_char_tokenizer(SYMBOLS, chat_template=DEFAULT_CHAT_TEMPLATE))
    with pytest.raises(PRMFormatError, match="chat template"):
        QwenPRMFormat().validate(build_char_tokenizer(SYMBOLS, added_tokens=["<extra_0>"]))


def test_outcome_rm_scores_every_prefix(tmp_path):
    tok = build_char_tokenizer()
    path = build_tiny_llama(tmp_path / "orm", tok, head="sequence_classification", num_labels=1)
    worker = backend_worker("prm", backend="outcome_rm", model=str(path), dtype="float32")
    (res,) = asyncio.run(worker.score([ScoreRequest.one("p", 1, PROMPT, STEPS)]))
    want = []
    for i in (1, 2):
        text = PROMPT + "\n".join(STEPS[:i]) + "\n"
        with torch.no_grad():
            want.append(
                float(torch.sigmoid(worker.model(input_ids=torch.tensor([tok.encode(text)])).logits[0, 0]))
            )
    assert res.scores[0] == pytest.approx(want, abs=1e-6)
    assert res.tokens[0] == sum(len(r.ids) for r in OutcomeRMFormat().rows(tok, PROMPT, STEPS))


def test_math_shepherd_batched_rows_equal_single_rows(tmp_path):
    tok = build_char_tokenizer(added_tokens=["ки"])
    path = build_tiny_llama(tmp_path / "ms", tok)
    worker = backend_worker("prm", backend="math_shepherd", model=str(path), dtype="float32")
    reqs = [ScoreRequest.one("p", i, PROMPT, STEPS[: 1 + i % 2]) for i in range(5)]
    batched = asyncio.run(worker.score(reqs))
    single = [asyncio.run(worker.score([r]))[0] for r in reqs]
    for b, s in zip(batched, single, strict=True):  # right padding does not change scores
        assert b.scores[0] == pytest.approx(s.scores[0], abs=1e-5) and b.tokens == s.tokens
    together = ScoreRequest("p", tuple(range(5)), PROMPT, tuple(r.chains[0] for r in reqs))
    (res,) = asyncio.run(worker.score([together]))  # several chains in one request
    assert [len(x) for x in res.scores] == [len(r.chains[0]) for r in reqs]
    for got, s in zip(res.scores, single, strict=True):
        assert got == pytest.approx(s.scores[0], abs=1e-5)


def bpe_tokenizer():
    """A byte-level BPE tokenizer trained here (merges across step boundaries are possible)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [
        f"{a} + {b} = {a + b} (left: {a} {a + b})\n{b} * {a} = {a * b}" for a in range(30) for b in range(9)
    ]
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<s>", "ки", "<extra_0>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    raw.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<s>", chat_template=DEFAULT_CHAT_TEMPLATE, add_bos_token=True
    )


CHAINS = [
    ("4 5 6 10\n", STEPS),
    ("What is 12 + 7?", ("12 + 7 = 19 (left: 19)", "so 19", "the answer is 19 ки done", "x")),
]


@pytest.mark.parametrize("fmt", [MathShepherdFormat(), QwenPRMFormat(), OutcomeRMFormat()], ids=type)
@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_token_counters_bound_the_exact_count_without_tokenising_steps(fmt, kind):
    symbols = SYMBOLS + "Wht?ыск"
    tok = (
        build_char_tokenizer(symbols, added_tokens=["ки", "<extra_0>"], chat_template=DEFAULT_CHAT_TEMPLATE)
        if kind == "char"
        else bpe_tokenizer()
    )
    counter = fmt.counter(tok)
    for question, steps in CHAINS:
        state = rebased = counter.root(question, question)
        for i, step in enumerate(steps, 1):
            state = counter.extend(state, step)
            exact = sum(len(r.ids) for r in fmt.rows(tok, question, steps[:i]))
            rebased = counter.extend(rebased, step)  # the parent's exact count + this step's bound
            if kind == "char" and all(s.isascii() for s in steps):  # a token per byte: exact
                assert state[0] == rebased[0] == exact, (type(fmt).__name__, i)
            else:  # never below, and within the bytes of the chain
                assert exact <= rebased[0] <= state[0] <= exact + sum(len(s.encode()) for s in steps[:i]) * i
            rebased = counter.rebase(rebased, exact)


def test_a_prm_refuses_a_request_over_its_reservation_without_running(tmp_path):
    tok = build_char_tokenizer(added_tokens=["ки"])
    worker = backend_worker("prm", backend="math_shepherd", model=str(build_tiny_llama(tmp_path / "ms", tok)))
    exact = sum(len(r.ids) for r in MathShepherdFormat().rows(tok, PROMPT, STEPS))
    over, fits = asyncio.run(
        worker.score(
            [
                ScoreRequest.one("p", 1, PROMPT, STEPS, exact - 1),
                ScoreRequest.one("p", 2, PROMPT, STEPS, exact),
            ]
        )
    )
    assert over.refused and over.scores == () and over.tokens == (exact,)
    assert not fits.refused and len(fits.scores[0]) == 2 and fits.tokens == (exact,)
