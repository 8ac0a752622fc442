"""What every agent command works with: the layout, the settings, the commands it may run, the
status document, and the instance's metadata. Built once per command by `Agent.from_vm()`; the
tests build it from fakes."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kgg.agent.cloud import Instance, Metadata
from kgg.agent.config import Endpoints, Paths, VmSettings, load_settings, paths_from_environment
from kgg.agent.status import StatusReporter, log_tail
from kgg.agent.system import System

LOG_TAG = "keras-gpu-gcp"


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

    def fail(self, step: str, error: Exception, log_file: Path | None = None) -> None:
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
        from kgg.agent.notify import notify

        notify(
            self,
            f"keras-gpu-gcp: the boot failed on {self.instance.name} at step {step}: {error}",
            {"event": "startup-failed", "step": step, "message": str(error)},
        )


def configure_logging(paths: Paths) -> None:
    """One line per event, UTC, to stderr (the journal, the serial console) and startup.log."""
    import time

    formatter = logging.Formatter(f"%(asctime)s {LOG_TAG}: %(message)s", "%Y-%m-%dT%H:%M:%SZ")
    formatter.converter = time.gmtime
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    paths.log.parent.mkdir(parents=True, exist_ok=True)
    handlers.append(logging.FileHandler(paths.log))
    logger = logging.getLogger(LOG_TAG)
    logger.handlers.clear()
    for handler in handlers:
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def from_vm(*, budget_shared: bool) -> Agent:
    """The agent on the VM itself (`python -m kgg.agent ...`). The boot shares the startup
    script's upload budget; the services have their own."""
    from kgg.agent.cloud import Bucket, read_password_hash, read_secret
    from kgg.agent.jupyter import jupyter_answers

    paths = paths_from_environment()
    configure_logging(paths)
    endpoints = Endpoints.from_environment()
    metadata = Metadata(endpoints.metadata)
    instance = Instance.read(metadata)
    status = StatusReporter(
        paths.status,
        Bucket(instance.bucket),
        budget_file=paths.upload_budget if budget_shared else None,
    )
    return Agent(
        paths=paths,
        settings=load_settings(paths),
        system=System(),
        status=status,
        metadata=metadata,
        endpoints=endpoints,
        instance=instance,
        read_password_hash=lambda secret: read_password_hash(endpoints, metadata, secret),
        jupyter_answers=jupyter_answers,
        read_webhook=lambda secret: read_secret(endpoints, metadata, secret, "the webhook URL"),
    )
