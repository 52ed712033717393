"""Errors every layer raises; a leaf module (it imports nothing of treesearch)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad config, argument or input file, found before (or instead of) any search. The message
    is one line naming what is wrong (``section.key: problem``); the CLI exits with status 2."""
