"""Run directories at a path or a URI (``s3://``, ``gs://``, ``file://`` ... through
``pyarrow.fs``, where installed).

A run at a URI is staged in a local directory: downloaded first (so ``--resume`` sees the
finished problems), then uploaded after the session, whether it ended well or not.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from treesearch.errors import ConfigError


def is_uri(out: str) -> bool:
    return "://" in out


def _fs(uri: str):
    try:
        from pyarrow import fs
    except ImportError as e:
        raise ConfigError(f"--out {uri}: URI outputs need pyarrow (pip install pyarrow)") from e
    try:
        return fs.FileSystem.from_uri(uri)
    except Exception as e:  # pyarrow raises several types for bad URIs
        raise ConfigError(f"--out {uri}: {e}") from e


@contextmanager
def local_run_dir(out: str, cache: Path | None = None) -> Iterator[Path]:
    """A local directory for the run at ``out``; for a URI, synced down before and up after."""
    if not is_uri(out):
        yield Path(out)
        return
    from pyarrow import fs as pafs

    filesystem, path = _fs(out)
    stage = (cache or Path.home() / ".cache" / "treesearch" / "runs") / hashlib.sha256(
        out.encode()
    ).hexdigest()[:16]
    stage.mkdir(parents=True, exist_ok=True)
    if filesystem.get_file_info(path).type == pafs.FileType.Directory:
        pafs.copy_files(
            path, str(stage), source_filesystem=filesystem, destination_filesystem=pafs.LocalFileSystem()
        )
    try:
        yield stage
    finally:
        filesystem.create_dir(path, recursive=True)
        pafs.copy_files(
            str(stage), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=filesystem
        )


def read_text(out: str, name: str) -> str:
    """``name`` inside the run at ``out`` (path or URI)."""
    if not is_uri(out):
        return (Path(out) / name).read_text()
    filesystem, path = _fs(out)
    with filesystem.open_input_stream(f"{path.rstrip('/')}/{name}") as f:
        return f.read().decode()
