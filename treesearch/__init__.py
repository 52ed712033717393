"""treesearch: tree search over LLM reasoning steps (the core; no Ray import)."""

__version__ = "0.1.0"  # equals pyproject.toml's (tests/test_packaging.py); the preflight compares it
