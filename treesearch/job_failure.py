"""Why a cluster job failed, in two lines: the cause, and a hint where the cause is known.

``status``, ``watch`` and ``results`` of a FAILED or STOPPED job show Ray's job message (its
first line) and the last error line of the job's log: a traceback's final line
(``ModuleNotFoundError: No module named 'msgpack'``) or our CLI's own ``error: ...`` line.
Nothing here imports Ray; :mod:`actors.jobs` reads the message and the log.
"""

from __future__ import annotations

import re

# A traceback's last line ("pkg.mod.SomeError: text", "KeyboardInterrupt") or our CLI's one line.
ERROR_LINE = re.compile(
    r"^(error: .+|([A-Za-z_][\w.]*\.)?[A-Z]\w*(Error|Exception|Exit|Interrupt)\b(: .*)?)$"
)

# (pattern in the error line, hint): the causes a first-day user meets.
HINTS: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"No module named '([\w.]+)'"),
        "the job's python lacks {0}: submit with --python PATH (an interpreter with "
        "treesearch[ray] installed) or --pip (installs treesearch[ray]'s requirements for the job)",
    ),
    (
        re.compile(r"[Vv]ersion mismatch|was started with.*Ray"),
        "the job's Ray differs from the cluster's: install the cluster's ray version in the "
        "job's python (or submit with --python / --pip)",
    ),
    (
        re.compile(r"--out .*cannot write|Permission denied|Read-only file system|Not a directory"),
        "the run dir cannot be written on the cluster: give --out a path every node can write "
        "(shared storage) or a URI (s3://, gs://, file://)",
    ),
    (
        re.compile(r"^error: "),
        "the cluster refused the config: the paths it names (models, data) are read on the "
        "cluster, not on this machine",
    ),
)


def last_error_line(log: str) -> str | None:
    """The log's last error line (see module docstring), or None."""
    for line in reversed(log.splitlines()):
        line = line.strip()
        if ERROR_LINE.match(line):
            return line
    return None


def hint(line: str) -> str | None:
    """A one-line fix for a known cause in ``line``, or None."""
    for pattern, text in HINTS:
        found = pattern.search(line)
        if found:
            return text.format(*found.groups())
    return None


def explain(state: str, message: str | None, log: str) -> list[str]:
    """The lines a FAILED / STOPPED job adds below its state: Ray's message (first line),
    the log's last error line, a hint. Empty for a job in any other state."""
    if state not in ("FAILED", "STOPPED"):
        return []
    lines = []
    first = (message or "").strip().splitlines()
    if first:
        lines.append(f"ray: {first[0]}")
    error = last_error_line(log)
    if error:
        lines.append(f"cause: {error}")
        fix = hint(error)
        if fix:
            lines.append(f"hint: {fix}")
    return lines
