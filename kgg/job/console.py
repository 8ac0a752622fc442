"""What the job writes for its reader: a terminal, or the VM's journal and Cloud Logging."""

from __future__ import annotations

import sys


def warn(message: str) -> None:
    """One line on stderr, where the VM's journal and a terminal both show it."""
    print(f"warning: {message}", file=sys.stderr)


def keras_verbose() -> int:
    """Keras' `verbose`: a live progress bar in a terminal, one line per epoch in logs."""
    return 1 if sys.stdout.isatty() else 2
