"""How long each phase of the real-boot suite took, and what it measured; printed after the test
session."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

# (phase, seconds), in the order they ran, and figures worth a line (disk use).
PHASES: list[tuple[str, float]] = []
NOTES: list[str] = []


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    finally:
        PHASES.append((name, time.monotonic() - started))
