"""PRM input formats, one file each. ``FORMATS`` maps ``prm.backend`` names to them."""

from treesearch.prm.base import PRMFormat, PRMFormatError, PRMRow, count_tokens
from treesearch.prm.math_shepherd import MathShepherdFormat
from treesearch.prm.outcome_rm import OutcomeRMFormat
from treesearch.prm.qwen_prm import QwenPRMFormat

FORMATS: dict[str, type] = {
    "math_shepherd": MathShepherdFormat,
    "qwen_prm": QwenPRMFormat,
    "outcome_rm": OutcomeRMFormat,
}

__all__ = [
    "FORMATS",
    "MathShepherdFormat",
    "OutcomeRMFormat",
    "PRMFormat",
    "PRMFormatError",
    "PRMRow",
    "QwenPRMFormat",
    "count_tokens",
]
