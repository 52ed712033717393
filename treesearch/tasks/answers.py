"""Reading and comparing final answers of math solutions.

* :func:`extract_boxed` -- the content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) with
  nested braces; several boxes: the last wins; none: None.
* :func:`extract_answer` -- the boxed answer, else the first group of a configurable pattern.
* :func:`normalize` -- a canonical string for majority voting (``\\dfrac`` -> ``\\frac``,
  ``\\left``/``\\right``, units in ``\\text{}``, ``x =``, degrees, percent, spaces, ...).
* :func:`answers_equal` -- equivalence through ``math-verify`` (fractions, LaTeX, decimals,
  sets) with the normalised strings as the fallback (and when math-verify is not installed).
"""

from __future__ import annotations

import re
from functools import lru_cache

_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{}`` in ``text`` (braces balanced), or None."""
    found = None
    for m in _BOX.finditer(text):
        depth, start = 1, m.end()
        for i in range(start, len(text)):
            c = text[i]
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    found = text[start:i]
                    break
    return found.strip() if found is not None else None


def extract_answer(text: str, pattern: str | None = None) -> str | None:
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    if pattern:
        matches = list(re.finditer(pattern, text))
        if matches:
            m = matches[-1]
            return (m.group(1) if m.groups() else m.group(0)).strip()
    return None


_UNIT = re.compile(r"\\(?:text|mbox|mathrm)\{\s*[a-zA-Z ]*\}")


def normalize(answer: str) -> str:
    s = answer.strip()
    s = re.sub(r"^\$+|\$+$", "", s)
    s = re.sub(r"^[a-zA-Z]\s*=\s*", "", s)  # "x = 3" -> "3"
    s = _UNIT.sub("", s)
    for a, b in (("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\left", ""), ("\\right", ""),
                 ("^\\circ", ""), ("^{\\circ}", ""), ("\\%", ""), ("%", ""), ("\\!", ""), ("\\,", ""),
                 ("\\ ", "")):  # fmt: skip
        s = s.replace(a, b)
    s = re.sub(r"\s+", "", s).rstrip(".")
    if re.fullmatch(r"-?\d+\.\d*?0+", s):  # 2.50 -> 2.5, 3.0 -> 3
        s = s.rstrip("0").rstrip(".")
    return s


@lru_cache(maxsize=65536)
def answers_equal(predicted: str | None, reference: str) -> bool:
    if predicted is None:
        return False
    if normalize(predicted) == normalize(reference):
        return True
    try:
        from math_verify import parse, verify
    except ImportError:
        return False
    try:
        return bool(verify(parse(f"${reference}$"), parse(f"${predicted}$")))
    except Exception:  # math-verify raises on unparseable input: not equal
        return False
