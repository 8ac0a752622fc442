"""The VM's logs in the bucket, so `kgg logs` reads them from the laptop, also once
the VM is gone: the startup log to `logs/startup.log`, the training log to
`runs/<run-id>/train.log`. A loop (kgg-log-sync.service) uploads each one every few seconds while
it grows; the boot uploads the startup log at every step end, the training service the training
log when the job ends. Whole files: the logs are small, and a whole object is what GCS's
generation numbers (the laptop's `-f`) track."""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from kgg.agent.config import LOG_SYNC_UNIT, Paths
from kgg.agent.units import render, write_if_changed
from kgg.common import storage
from kgg.common.contract import STARTUP_LOG_OBJECT, TRAIN_LOG_FILE, run_folder

LOG_SYNC_SECONDS = 5.0
LOG_CONTENT_TYPE = "text/plain; charset=utf-8"
# A VM on a new disk takes over its run's log up to this size (a run's log is megabytes).
MAX_RESTORED_LOG_BYTES = 64 << 20

log = logging.getLogger("keras-gpu-gcp")


def train_log_object(run_id: str) -> str:
    return f"{run_folder(run_id)}{TRAIN_LOG_FILE}"


def log_objects(paths: Paths, run_id: str) -> dict[Path, str]:
    """Each local log and the object it goes to."""
    return {paths.log: STARTUP_LOG_OBJECT, paths.training_log: train_log_object(run_id)}


@dataclass
class LogMirror:
    """Uploads a log when its size or modification time changed since its last upload."""

    bucket: str
    logs: dict[Path, str]
    seen: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def sync(self) -> list[str]:
        """The objects uploaded; a failed upload is logged and tried again next time."""
        uploaded = []
        for path, name in self.logs.items():
            try:
                stat = path.stat()
            except OSError:
                continue  # not written yet
            mark = (stat.st_size, stat.st_mtime_ns)
            if self.seen.get(path) == mark:
                continue
            try:
                storage.write_bytes(
                    f"gs://{self.bucket}/{name}", path.read_bytes(), content_type=LOG_CONTENT_TYPE
                )
            except (OSError, storage.StorageError) as error:
                log.warning("log sync: %s not uploaded: %s", name, error)
                continue
            self.seen[path] = mark
            uploaded.append(name)
        return uploaded


def restore_training_log(paths: Paths, bucket: str, run_id: str) -> bool:
    """A VM on a new disk continues its run's log rather than replacing it with its own part."""
    if paths.training_log.exists():
        return False
    try:
        data = storage.read_limited(
            f"gs://{bucket}/{train_log_object(run_id)}", MAX_RESTORED_LOG_BYTES
        )
    except storage.StorageError as error:  # TooLargeError too: a log this big is no run's
        log.warning("log sync: the run's earlier log not restored: %s", error)
        return False
    if not data:
        return False
    paths.training_log.parent.mkdir(parents=True, exist_ok=True)
    paths.training_log.write_bytes(data)
    return True


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def sync_loop(
    mirror: LogMirror,
    *,
    every: float = LOG_SYNC_SECONDS,
    also: Callable[[], None] | None = None,
    rounds: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Syncs every `every` seconds (and runs `also`, the cost ledger's tick) until SIGTERM, then
    once more: the last lines of a VM that stops reach the bucket."""
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    done = 0
    try:
        while rounds is None or done < rounds:
            mirror.sync()
            if also is not None:
                also()
            done += 1
            sleep(every)
    except _Stop:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        mirror.sync()


def write_unit(paths: Paths) -> bool:
    """kgg-log-sync.service; True when its text changed."""
    unit = render(
        f"{LOG_SYNC_UNIT}.j2",
        app=paths.on_vm(paths.app),
        python=paths.on_vm(paths.venv_python),
        state=paths.on_vm(paths.state),
    )
    return write_if_changed(paths.units / LOG_SYNC_UNIT, unit)
