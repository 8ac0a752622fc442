"""What every agent command works with: the layout, the settings, the commands it may run, the
status document, and the instance's metadata. A leaf: the entry point (kgg/agent/__main__.py)
builds it once per command from the VM; the tests build it from fakes."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kgg.agent.cloud import Instance
from kgg.agent.config import Paths, VmSettings
from kgg.agent.status import StatusReporter, log_tail
from kgg.agent.system import System
from kgg.common.vm_runtime import LOG_TAG, Endpoints, Metadata


class StepFailed(RuntimeError):
    """A step cannot go on: the message says what, the hint what to try."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


@dataclass
class Agent:
    paths: Paths
    settings: VmSettings
    system: System
    status: StatusReporter
    metadata: Metadata
    endpoints: Endpoints
    instance: Instance
    read_password_hash: Callable[[str], str]
    jupyter_answers: Callable[[str], bool]
    # The notification webhook's URL from its secret (None: this agent sends none).
    read_webhook: Callable[[str], str] | None = None
    log: logging.Logger = field(default_factory=lambda: logging.getLogger(LOG_TAG))

    def marker(self, name: str) -> Path:
        return self.paths.marker(name)

    def marked(self, name: str) -> str | None:
        try:
            return self.paths.marker(name).read_text().strip()
        except OSError:
            return None

    def mark(self, name: str, value: str = "done") -> None:
        self.paths.markers.mkdir(parents=True, exist_ok=True)
        self.paths.marker(name).write_text(value + "\n")

    def record_failure(self, step: str, error: Exception, log_file: Path | None = None) -> None:
        """Records a failed step in the status document, with the log tail and a hint."""
        hint = getattr(error, "hint", "") or (
            "see journalctl -u google-startup-scripts.service; rerun with "
            "sudo google_metadata_script_runner startup"
        )
        self.log.error("step %s failed: %s", step, error)
        self.status.update(
            "phase=failed",
            f"step.{step}=failed",
            f"error.step={step}",
            f"error.message={error}",
            f"error.hint={hint}",
            f"error.log_tail={log_tail(log_file or self.paths.log)}",
        )
