"""The status document from the VM's side: every change goes to the local copy under a lock
(kgg/common/documents.py) and then to `gs://<bucket>/status/startup.json`. Failed uploads spend a
small time budget (kgg/common/vm_runtime.py's, as the startup script's) and never stop what the
VM is doing."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from kgg.agent.cloud import Bucket
from kgg.common.contract import STATUS_OBJECT
from kgg.common.documents import StartupStatus, update_file
from kgg.common.vm_runtime import UPLOAD_TRIES, UploadBudget, with_retries

LOG_TAIL_LINES = 40


class StatusReporter:
    """`budget_file`: the boot shares the startup script's budget; a service has its own."""

    def __init__(
        self,
        path: Path,
        bucket: Bucket | None,
        *,
        budget_file: Path | None = None,
        budget_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.bucket = bucket
        self.budget = UploadBudget(budget_file, budget_seconds, clock)

    def update(self, *changes: str) -> StartupStatus:
        return update_file(self.path, list(changes), self._upload)

    def _upload(self, data: bytes) -> None:
        bucket = self.bucket
        if bucket is None:
            return

        def upload() -> None:
            with_retries(lambda: bucket.upload(STATUS_OBJECT, data, "application/json"),
                         STATUS_OBJECT, attempts=UPLOAD_TRIES, base_seconds=0,
                         errors=(Exception,))  # fmt: skip

        self.budget.upload("the status document", upload, local=self.path)

    @property
    def spent(self) -> float:
        return self.budget.spent


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The file's last lines as printable ASCII (the document stays readable anywhere)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    tail = "\n".join(text.splitlines()[-lines:])
    return "".join(c for c in tail if c in "\t\n" or " " <= c <= "~")
