"""PRM input formats, one file each; each registers itself as a ``prm.backend``
(:mod:`treesearch.backends.model_prm`)."""

from treesearch.prm.base import PRMFormat, PRMFormatError, PRMRow, count_tokens

__all__ = ["PRMFormat", "PRMFormatError", "PRMRow", "count_tokens"]
