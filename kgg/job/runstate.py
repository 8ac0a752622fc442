"""Bookkeeping of one run: state.json, its backup under --out, progress.json, the done marker.

State lives in a local work folder (`<out>/backup` for a local --out; a cache folder mirrored to
`<out>/backup` every epoch for a gs:// --out): state.json (phases, epochs done, early-stopping
state, history) plus the weight files it names. Weights are written before state.json, locally
and in the bucket, so a kill between the two never leaves state pointing at missing weights.

A run is identified by its fingerprint: the options it trains with and its data's content
(folders.DataIdentity). A rerun with another fingerprint never resumes or reports the run in --out:
it stops with one line saying what changed, or with --restart starts over.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kgg.common import storage
from kgg.common.contract import BACKUP_DIR, METRICS_FILE, PROGRESS_FILE, TENSORBOARD_DIR
from kgg.common.documents import Progress
from kgg.job.config import NOT_FINGERPRINTED, TrainConfig

STATE_VERSION = 2
# Simulates a kill after this many finished epochs (the features pass counts as one): tests and
# rehearsals of the resume path.
FAIL_AFTER_ENV = "KGG_FAIL_AFTER_EPOCHS"
RESTART_HINT = "add --restart to start over"


@dataclass
class PhaseState:
    """Where one phase stands: epochs done, early stopping, and its time and images, as
    state.json records them under `phases`."""

    epochs_done: int = 0
    done: bool = False
    # Early stopping ended it before its last epoch.
    stopped: bool = False
    # The monitored value of the best epoch (or of the weights the phase started from).
    best: float | None = None
    # Epochs since the best one.
    wait: int = 0
    seconds: float = 0.0
    images: int = 0

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> PhaseState:
        return cls(**{f.name: document[f.name] for f in fields(cls) if f.name in document})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SimulatedInterruption(RuntimeError):
    """Raised after KGG_FAIL_AFTER_EPOCHS epochs, once the epoch's state is safely backed up."""


class Terminated(BaseException):
    """SIGTERM arrived (a spot preemption or a VM stop, ~30 s before the power goes): stop now,
    the same command resumes. A BaseException like KeyboardInterrupt, so that no
    `except Exception` on the way up swallows it."""


class RunMismatch(ValueError):
    """--out holds a run of other data or options: never resumed or reported as this one."""


class CheckpointError(ValueError):
    """A checkpoint of the run cannot be read; the message names it and how to start over."""


# Resume checkpoints live under <out>/backup; `pull` leaves them behind.
# Files in this folder of the work dir are never mirrored to the bucket: cached feature maps
# (~2 GB at full size) that a resumed run on a fresh machine recomputes in one forward pass.
LOCAL_ONLY_DIR = "local"
# What a run writes under --out besides backup/; --restart deletes them, the done marker first.
RESULT_FILES = (
    PROGRESS_FILE, METRICS_FILE, "model.keras", "history.csv", "submission.csv",
    "split.csv", "confusion_matrix.png", "training_curves.png", "class_names.json", "config.json",
)  # fmt: skip


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@contextlib.contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """Turns SIGTERM into Terminated in the main thread: the batch in progress is abandoned (the
    last finished epoch's checkpoint stays the one to resume from) and the way out removes
    temporary files. Only the first SIGTERM raises, so a second one cannot cut the cleanup."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread (a notebook's worker)
        return
    received: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if not received:
            received.append(signum)
            raise Terminated("SIGTERM: the machine is stopping")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def work_dir_for(config: TrainConfig) -> Path:
    """Local folder for state and weights: under --out when local, in the cache for gs://."""
    if not storage.is_gcs(config.out):
        return Path(config.out, BACKUP_DIR)
    digest = hashlib.sha256(config.out.encode()).hexdigest()[:16]
    return Path(config.cache_dir, "runs", digest)


def _read_optional_json(url: str) -> Any | None:
    """A result document, or None when it is missing or unreadable (it is rewritten anyway)."""
    try:
        return storage.read_json(url)
    except ValueError:
        return None


def fingerprint_of(config: TrainConfig, data: dict[str, Any]) -> dict[str, Any]:
    """What identifies a run: its options' fingerprint and its data's identity (DataIdentity)."""
    return {"options": config.fingerprint(), "data": data}


def mismatch(stored: Any, current: dict[str, Any], config: TrainConfig) -> str | None:
    """Why the run recorded with `stored` is not this one, in words; None when it is."""
    if not isinstance(stored, dict) or not isinstance(stored.get("data"), dict):
        return "it was made by an earlier version of this job, which did not record its data"
    then, now = stored["data"], current["data"]
    if then.get("digest") != now["digest"]:
        if then.get("files") != now["files"]:
            change = f"{then.get('files')} files then, {now['files']} now"
        else:
            change = f"the same {now['files']} files, other contents"
        return f"its data changed since it started ({change})"
    if stored.get("options") != current["options"]:
        return f"it was started with other options ({_changed_options(config)})"
    return None


def _changed_options(config: TrainConfig) -> str:
    """`seed 42, now 1` from the run's config.json, or where to look when it is unreadable."""
    recorded = _read_optional_json(storage.join(config.out, "config.json"))
    if not isinstance(recorded, dict):
        return "its config.json is missing"
    now = config.to_dict()
    changed = [
        f"{key} {recorded.get(key)!r}, now {value!r}"
        for key, value in now.items()
        if key not in NOT_FINGERPRINTED and recorded.get(key) != value
    ]
    return "; ".join(changed) or "see its config.json"


def finished_metrics(
    config: TrainConfig, fingerprint: dict[str, Any], restart: bool
) -> dict[str, Any] | None:
    """The metrics of the finished run in --out when it is this run (same data and options).

    A finished run of other data or options raises RunMismatch, or with `restart` has its
    results deleted (this run replaces it); None when there is nothing finished to report."""
    progress = Progress.from_json(_read_optional_json(storage.join(config.out, PROGRESS_FILE)))
    if progress is None or progress.state != "done":
        return None
    reason = mismatch(progress.fingerprint, fingerprint, config)
    if reason is None:
        metrics = _read_optional_json(storage.join(config.out, METRICS_FILE))
        return metrics if isinstance(metrics, dict) else {}
    if not restart:
        raise RunMismatch(
            f"{config.out} holds a finished run, but {reason}; choose another --out, or add "
            "--restart to replace it"
        )
    print(f"{config.out} holds a finished run, but {reason}: replacing it (--restart)")
    delete_results(config)
    return None


def delete_results(config: TrainConfig) -> None:
    """Deletes the run's result files (the done marker first), its backup and its TensorBoard
    event files under --out."""
    for name in RESULT_FILES:
        storage.delete_file(storage.join(config.out, name))
    storage.delete_prefix(storage.join(config.out, BACKUP_DIR))
    storage.delete_prefix(storage.join(config.out, TENSORBOARD_DIR))


class Run:
    """Bookkeeping of one run: state.json, backups, progress.json and the simulated kill."""

    def __init__(
        self, config: TrainConfig, fingerprint: dict[str, Any], restart: bool = False
    ) -> None:
        self.config = config
        self.fingerprint = fingerprint
        self.work = work_dir_for(config)
        self.backup_url = storage.join(config.out, BACKUP_DIR)
        self.remote_backup = storage.is_gcs(config.out)
        fail_after = os.environ.get(FAIL_AFTER_ENV)
        self.fail_after = int(fail_after) if fail_after else None
        self.epochs_this_process = 0
        self.state = self._load_state(restart)
        # The phase running now, for the progress.json of a failed or interrupted run.
        self.current_phase = ""
        self.work.mkdir(parents=True, exist_ok=True)

    @property
    def local_only(self) -> Path:
        """A folder of the work dir that is not backed up (see LOCAL_ONLY_DIR)."""
        folder = self.work / LOCAL_ONLY_DIR
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    @property
    def work_option(self) -> str:
        """The option that puts the work dir on another disk (see work_dir_for)."""
        return "--cache-dir" if self.remote_backup else "--out"

    # --- state -----------------------------------------------------------------------------
    def _new_state(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "fingerprint": self.fingerprint,
            "phases": {},
            "history": [],
        }

    @property
    def phases(self) -> dict[str, PhaseState]:
        """Every phase started so far, by name, in the order they started."""
        phases: dict[str, PhaseState] = self.state["phases"]
        return phases

    @staticmethod
    def _score(state: dict[str, Any] | None) -> int:
        if not state:
            return -1
        return sum(p["epochs_done"] + p["done"] for p in state.get("phases", {}).values())

    def read_checkpoint_json(self, url: str | Path) -> Any | None:
        """A state document, or None when missing; CheckpointError when it cannot be read."""
        try:
            document = storage.read_json(url)
        except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise self.corrupt(url, error) from error
        if document is not None and not isinstance(document, dict):
            raise self.corrupt(url, TypeError(f"a {type(document).__name__}, not an object"))
        return document

    def corrupt(self, path: str | Path, error: BaseException) -> CheckpointError:
        """The one-line error for an unreadable checkpoint: what, why, and how to start over."""
        return CheckpointError(
            f"checkpoint {path} of the run in {self.config.out} is unreadable "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
            f"{RESTART_HINT} (the same command with --restart)"
        )

    def _read_state(self) -> dict[str, Any] | None:
        local = self.read_checkpoint_json(self.work / "state.json")
        if self.remote_backup:
            remote_url = storage.join(self.backup_url, "state.json")
            remote = self.read_checkpoint_json(remote_url)
            if self._score(remote) > self._score(local):
                # A fresh VM (or a wiped cache): the bucket's backup is ahead; mirror it.
                self._clear_work()
                storage.download_tree(self.backup_url, self.work, progress=False)
                local = self.read_checkpoint_json(self.work / "state.json")
        return local

    def _load_state(self, restart: bool) -> dict[str, Any]:
        try:
            state = self._read_state()
        except CheckpointError as error:
            if not restart:
                raise
            print(f"{error}: starting over (--restart)")
            self.start_over()
            return self._new_state()
        if state is None:
            # Files of a run killed before its first state.json: belong to no run, never used.
            self._clear_work()
            return self._new_state()
        reason = mismatch(state.get("fingerprint"), self.fingerprint, self.config)
        if reason is not None:
            if not restart:
                raise RunMismatch(
                    f"{self.config.out} holds an unfinished run, but {reason}; {RESTART_HINT} "
                    "with this data and these options, or choose another --out"
                )
            print(f"{self.config.out} holds an unfinished run, but {reason}: starting over")
            self.start_over()
            return self._new_state()
        print(f"resuming the run in {self.config.out} ({self._describe(state)})")
        phases = state.get("phases", {})
        state["phases"] = {name: PhaseState.from_dict(p) for name, p in phases.items()}
        return state

    def _clear_work(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)

    def start_over(self) -> None:
        """Discards the run in --out: local work, backup and results."""
        self._clear_work()
        delete_results(self.config)
        self.state = self._new_state()

    @staticmethod
    def _describe(state: dict[str, Any]) -> str:
        parts = [
            f"{name}: {'done' if p['done'] else str(p['epochs_done']) + ' epochs'}"
            for name, p in state["phases"].items()
        ]
        return ", ".join(parts) or "nothing finished yet"

    def phase(self, name: str) -> PhaseState:
        """The state of phase `name`, a new one when it has not started."""
        return self.phases.setdefault(name, PhaseState())

    def save(self) -> None:
        """Writes state.json after the weights it names, then mirrors the folder to the bucket."""
        phases = {name: p.to_dict() for name, p in self.phases.items()}
        storage.write_json(self.work / "state.json", {**self.state, "phases": phases})
        if self.remote_backup:
            storage.upload_tree(
                self.work,
                self.backup_url,
                workers=self.config.workers,
                include=lambda name: (
                    name != "state.json"
                    and not name.startswith(f"{LOCAL_ONLY_DIR}/")
                    and not name.startswith(".")  # temporary files (kgg.job.atomic)
                ),
            )
            storage.upload_file(
                self.work / "state.json", storage.join(self.backup_url, "state.json")
            )

    def finished_epoch(self) -> None:
        """Counts an epoch whose state is saved; simulates a kill when asked to."""
        self.epochs_this_process += 1
        if self.fail_after is not None and self.epochs_this_process >= self.fail_after:
            raise SimulatedInterruption(
                f"{FAIL_AFTER_ENV}={self.fail_after}: stopped after {self.epochs_this_process} "
                "epoch(s)"
            )

    # --- progress.json ---------------------------------------------------------------------
    def progress(
        self,
        state: str,
        phase: str,
        epoch: int,
        epochs: int,
        metrics: dict[str, Any] | None = None,
        eta_seconds: float | None = None,
        images_per_second: float | None = None,
        error: str | None = None,
    ) -> None:
        """progress.json as docs/CONTRACTS.md, "The progress document" specifies, for `kgg status`.

        A failed run adds `error` (the exception's message), which `kgg status` shows.
        `fingerprint` tells a later run with the same --out whether it is this run."""
        document = Progress(
            state=state,
            recipe=self.config.recipe,
            phase=phase,
            epoch=epoch,
            epochs=epochs,
            updated=_now(),
            metrics=metrics or {},
            eta_seconds=eta_seconds,
            images_per_second=images_per_second,
            error=error,
            fingerprint=self.fingerprint,
        ).to_json()
        storage.write_json(storage.join(self.config.out, PROGRESS_FILE), document)

    def put(self, name: str, data: bytes | str) -> None:
        """Writes one result file under --out."""
        payload = data.encode() if isinstance(data, str) else data
        storage.write_bytes(storage.join(self.config.out, name), payload)
