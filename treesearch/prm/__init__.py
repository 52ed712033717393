"""PRM input formats, one file each (pure: text and token ids in, rows and counts out); the
backends that serve them are registered in :mod:`treesearch.backends.prm_models`."""

from treesearch.prm.base import PRMFormat, PRMFormatError, PRMRow, count_tokens

__all__ = ["PRMFormat", "PRMFormatError", "PRMRow", "count_tokens"]
