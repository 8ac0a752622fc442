"""Files that are whole or absent: written under a temporary name, then renamed into place."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to: renamed to `path` when the block ends, deleted
    when it fails or is interrupted (SIGTERM), so a kill never leaves a half-written file under
    the real name. The temporary name keeps the suffix (numpy and Keras pick formats by it) and
    starts with a dot, which data discovery and the backup ignore."""
    tmp = path.with_name(f".tmp.{path.name}")
    try:
        yield tmp
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
