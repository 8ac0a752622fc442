"""How long each phase of the real-boot suite took, and what it measured; printed after the test
session by tests/conftest.py, which gets them from the worker that ran the suite."""

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


def snapshot() -> dict[str, list]:
    """The phases and notes so far, in a form a test report carries between processes."""
    return {"phases": [list(entry) for entry in PHASES], "notes": list(NOTES)}


def summary(report: dict[str, list]) -> list[str]:
    """The lines printed after the session: each phase, the total, then the notes."""
    lines = [f"{seconds:7.1f} s  {name}" for name, seconds in report["phases"]]
    lines.append(f"{sum(seconds for _, seconds in report['phases']):7.1f} s  in all")
    return lines + report["notes"]
