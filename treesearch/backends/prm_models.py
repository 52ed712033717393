"""The model-backed PRM backends: one per input format of :mod:`treesearch.prm`, each with its
config (the format's fields on top of :class:`~treesearch.backends.model_prm.ModelPRMConfig`)."""

from __future__ import annotations

from treesearch.backends.model_prm import ModelPRMConfig, model_prm
from treesearch.backends.registry import register
from treesearch.prm.math_shepherd import MathShepherdFormat
from treesearch.prm.outcome_rm import OutcomeRMFormat
from treesearch.prm.qwen_prm import QWEN_SYSTEM, QwenPRMFormat
from treesearch.schema import Text, section


@section
class MathShepherdConfig(ModelPRMConfig):
    """``prm: {backend: math_shepherd}``: step tag + ``+``/``-`` labels (transformers or vLLM)."""

    step_tag: Text = "ки"
    good_token: Text = "+"
    bad_token: Text = "-"

    embedded = "prm"


@section
class QwenPRMConfig(ModelPRMConfig):
    """``prm: {backend: qwen_prm}``: the chat template, ``<extra_0>`` separators, a 2-class head."""

    separator: Text = "<extra_0>"
    system_prompt: Text = QWEN_SYSTEM


@section
class OutcomeRMConfig(ModelPRMConfig):
    """``prm: {backend: outcome_rm}``: a sequence classifier run on every prefix."""

    delimiter: Text = "\n"  # joins steps in each prefix row


register(
    model_prm(
        "math_shepherd",
        MathShepherdConfig,
        lambda cfg: MathShepherdFormat(cfg.step_tag, cfg.good_token, cfg.bad_token),
        vllm=True,
    )
)
register(
    model_prm(
        "qwen_prm", QwenPRMConfig, lambda cfg: QwenPRMFormat(cfg.separator, cfg.system_prompt), vllm=True
    )
)
register(model_prm("outcome_rm", OutcomeRMConfig, lambda cfg: OutcomeRMFormat(cfg.delimiter)))
