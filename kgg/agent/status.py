"""The status document from the VM's side: every change goes to the local copy under a lock
(kgg/common/documents.py) and then to `gs://<bucket>/status/startup.json`. Failed uploads spend a
small time budget and never stop what the VM is doing."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from kgg.agent.cloud import Bucket
from kgg.common.contract import STATUS_OBJECT
from kgg.common.documents import StartupStatus, update_file

UPLOAD_TRIES = 2
# Failed uploads may cost one boot (the startup script and this agent together) this long.
UPLOAD_BUDGET_SECONDS = 60.0
LOG_TAIL_LINES = 40

log = logging.getLogger("keras-gpu-gcp")


class StatusReporter:
    def __init__(
        self,
        path: Path,
        bucket: Bucket | None,
        *,
        budget_file: Path | None = None,
        budget_seconds: float = UPLOAD_BUDGET_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.bucket = bucket
        self.budget_file = budget_file
        self.budget_seconds = budget_seconds
        self.clock = clock
        self._spent = 0.0

    def update(self, *changes: str) -> StartupStatus:
        return update_file(self.path, list(changes), self._upload)

    def _upload(self, data: bytes) -> None:
        if self.bucket is None or self.spent >= self.budget_seconds:
            return
        started = self.clock()
        for attempt in range(UPLOAD_TRIES):
            try:
                self.bucket.upload(STATUS_OBJECT, data, "application/json")
                return
            except Exception as error:  # any failure: the VM goes on without the upload
                log.warning("status upload %d of %d failed: %s", attempt + 1, UPLOAD_TRIES, error)
        self.spent += self.clock() - started
        if self.spent >= self.budget_seconds:
            log.warning(
                "status uploads failed for %.0fs: no more uploads from this run (local copy: %s)",
                self.spent,
                self.path,
            )

    @property
    def spent(self) -> float:
        if self.budget_file is None:
            return self._spent
        try:
            return float(self.budget_file.read_text())
        except (OSError, ValueError):
            return 0.0

    @spent.setter
    def spent(self, seconds: float) -> None:
        if self.budget_file is None:
            self._spent = seconds
        else:
            self.budget_file.write_text(f"{seconds:.1f}\n")


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The file's last lines as printable ASCII (the document stays readable anywhere)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    tail = "\n".join(text.splitlines()[-lines:])
    return "".join(c for c in tail if c in "\t\n" or " " <= c <= "~")
