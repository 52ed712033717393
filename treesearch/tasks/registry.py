"""Tasks by name: ``task.name`` picks a factory that builds the task from the job's config.

A factory gets the job config and the generator's tokenizer (tasks whose prompts are the
policy's chat template need it; None for backends without a model).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from treesearch.config import JobConfig
from treesearch.errors import ConfigError
from treesearch.tasks.base import Task
from treesearch.tasks.game24 import Game24


def _game24(cfg: JobConfig, tokenizer: Any) -> Task:
    return Game24(cfg.task.split, cfg.task.integer_only, cfg.task.csv_path)


def _math(cfg: JobConfig, tokenizer: Any) -> Task:
    from treesearch.tasks.math import MathTask

    t = cfg.task
    if not t.path:
        raise ConfigError("task.path: the math task needs a dataset file")
    if tokenizer is None:
        raise ConfigError("generator.model: the math task builds prompts with the policy's chat template")
    unknown = set(t.fields) - {"question", "answer", "id"}
    if unknown:
        raise ConfigError(f"task.fields: unknown role(s) {sorted(unknown)} (roles: question, answer, id)")
    return MathTask(
        t.path,
        tokenizer,
        dict(t.fields),
        t.system_prompt,
        t.delimiter,
        t.max_steps,
        t.answer_pattern,
        t.chat_template,
    )


TASKS: dict[str, Callable[[JobConfig, Any], Task]] = {"game24": _game24, "math": _math}


def make_task(cfg: JobConfig, tokenizer: Any = None) -> Task:
    if cfg.task.name not in TASKS:
        raise ConfigError(f"task.name: {cfg.task.name!r} is not one of {sorted(TASKS)}")
    try:
        return TASKS[cfg.task.name](cfg, tokenizer)
    except (ValueError, FileNotFoundError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"task: {e}") from e
