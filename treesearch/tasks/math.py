"""Math word problems (MATH-500, GSM8K, AIME style) with a chat-model policy.

Problems come from a local JSONL or Parquet file, or a ``datasets`` dataset saved to disk
(``save_to_disk``); ``fields`` maps the question, reference answer and (optional) id columns.
The prompt is built with the policy model's own chat template (system prompt + question as the
user turn, generation prompt added), steps are split on ``delimiter`` (default a blank line), a
chain ends when it boxes an answer (or at end of sequence / the depth limit), answers are read
from the last ``\\boxed{}`` (or ``answer_pattern``) and compared with ``math-verify``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from treesearch.tasks.answers import answers_equal, extract_answer, normalize
from treesearch.tasks.base import Problem

DEFAULT_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


class MathTaskError(ValueError):
    pass


def load_rows(path: str) -> list[dict[str, Any]]:
    p = Path(path).expanduser()
    if not p.exists():
        raise MathTaskError(f"dataset not found: {p}")
    if p.is_dir():
        try:
            from datasets import load_from_disk
        except ImportError as e:
            raise MathTaskError(f"{p} is a directory: reading a saved dataset needs `datasets`") from e
        ds = load_from_disk(str(p))
        if hasattr(ds, "keys") and not hasattr(ds, "column_names"):  # a DatasetDict: take the one split
            if len(ds) != 1:
                raise MathTaskError(f"{p} holds splits {sorted(ds)}: point at one split's directory")
            ds = next(iter(ds.values()))
        return [dict(r) for r in ds]
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(p).to_pylist()
    rows = []
    for i, line in enumerate(p.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise MathTaskError(f"{p}:{i}: not valid JSON ({e.msg})") from e
    return rows


class MathTask:
    """Args: see :class:`treesearch.config.TaskConfig` (``path``, ``fields``, ``system_prompt``,
    ``delimiter``, ``max_steps``, ``answer_pattern``, ``chat_template``) and the policy tokenizer."""

    name = "math"

    def __init__(
        self,
        path: str,
        tokenizer: Any,
        fields: dict[str, str] | None = None,
        system_prompt: str | None = DEFAULT_SYSTEM,
        delimiter: str = "\n\n",
        max_steps: int = 40,
        answer_pattern: str | None = None,
        chat_template: str | None = None,
    ):
        self.path, self.tokenizer = path, tokenizer
        self.fields = {"question": "problem", "answer": "answer", "id": None, **(fields or {})}
        self.system_prompt, self.step_delimiter = system_prompt, delimiter
        self.max_depth, self.answer_pattern = max_steps, answer_pattern
        self.chat_template = chat_template
        if chat_template is None and not getattr(tokenizer, "chat_template", None):
            raise MathTaskError("the policy model has no chat template and task.chat_template is not set")

    def prompt(self, question: str) -> str:
        messages = [{"role": "user", "content": question}]
        if self.system_prompt:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, chat_template=self.chat_template
        )

    def problem_from_text(self, question: str) -> Problem:
        """A problem asked in a message (no reference answer: its correctness is unknown)."""
        if len(question) > 100_000:
            raise ValueError(f"the question is {len(question):,} characters (at most 100,000)")
        return Problem("question", self.prompt(question), {"question": question})

    def problems(self) -> list[Problem]:
        rows = load_rows(self.path)
        if not rows:
            raise MathTaskError(f"dataset is empty: {self.path}")
        keys = sorted(rows[0])
        for role in ("question", "answer", "id"):
            col = self.fields[role]
            if col is not None and col not in rows[0]:
                raise MathTaskError(
                    f"task.fields.{role}: no column {col!r} in {self.path} (found: {', '.join(keys)})"
                )
        out = []
        for i, r in enumerate(rows):
            pid = str(r[self.fields["id"]]) if self.fields["id"] else str(i)
            q, ref = str(r[self.fields["question"]]), str(r[self.fields["answer"]])
            out.append(Problem(pid, self.prompt(q), {"question": q, "reference": ref}))
        return out

    def is_terminal(self, problem: Problem, steps: Sequence[str]) -> bool:
        return bool(steps) and extract_answer(steps[-1], self.answer_pattern) is not None

    def extract_answer(self, problem: Problem, steps: Sequence[str]) -> str | None:
        ans = extract_answer(self.step_delimiter.join(steps), self.answer_pattern)
        return None if ans is None else normalize(ans)

    def is_correct(self, problem: Problem, steps: Sequence[str]) -> bool:
        if "reference" not in problem.data:  # a question asked of the service: nothing to grade by
            return False
        ans = extract_answer(self.step_delimiter.join(steps), self.answer_pattern)
        return answers_equal(ans, problem.data["reference"])

    def verify_step(self, problem: Problem, steps: Sequence[str]) -> bool | None:
        return None
