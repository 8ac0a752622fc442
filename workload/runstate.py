"""Bookkeeping of one run: state.json, its backup under --out, progress.json, the done marker.

State lives in a local work folder (`<out>/backup` for a local --out; a cache folder mirrored to
`<out>/backup` every epoch for a gs:// --out): state.json (phases, epochs done, early-stopping
state, history) plus the weight files it names. Weights are written before state.json, locally
and in the bucket, so a kill between the two never leaves state pointing at missing weights.
"""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from workload import storage
from workload.config import TrainConfig

STATE_VERSION = 1
PROGRESS_VERSION = 1
# Simulates a kill after this many finished epochs (the features pass counts as one): tests and
# rehearsals of the resume path.
FAIL_AFTER_ENV = "KGG_FAIL_AFTER_EPOCHS"


class SimulatedInterruption(RuntimeError):
    """Raised after KGG_FAIL_AFTER_EPOCHS epochs, once the epoch's state is safely backed up."""


# Resume checkpoints live under <out>/backup; `pull` leaves them behind.
BACKUP_DIR = "backup"
# Files in this folder of the work dir are never mirrored to the bucket: cached feature maps
# (~2 GB at full size) that a resumed run on a fresh machine recomputes in one forward pass.
LOCAL_ONLY_DIR = "local"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def work_dir_for(config: TrainConfig) -> Path:
    """Local folder for state and weights: under --out when local, in the cache for gs://."""
    if not storage.is_gcs(config.out):
        return Path(config.out, BACKUP_DIR)
    digest = hashlib.sha256(config.out.encode()).hexdigest()[:16]
    return Path(config.cache_dir, "runs", digest)


def is_done(out: str) -> bool:
    progress = storage.read_json(storage.join(out, "progress.json"))
    return bool(progress) and progress.get("state") == "done"


class Run:
    """Bookkeeping of one run: state.json, backups, progress.json and the simulated kill."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.work = work_dir_for(config)
        self.backup_url = storage.join(config.out, BACKUP_DIR)
        self.remote_backup = storage.is_gcs(config.out)
        fail_after = os.environ.get(FAIL_AFTER_ENV)
        self.fail_after = int(fail_after) if fail_after else None
        self.epochs_this_process = 0
        self.state = self._load_state()
        self.work.mkdir(parents=True, exist_ok=True)

    @property
    def local_only(self) -> Path:
        """A folder of the work dir that is not backed up (see LOCAL_ONLY_DIR)."""
        folder = self.work / LOCAL_ONLY_DIR
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    # --- state -----------------------------------------------------------------------------
    def _new_state(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "fingerprint": self.config.fingerprint(),
            "phases": {},
            "history": [],
        }

    @staticmethod
    def _score(state: dict[str, Any] | None) -> int:
        if not state:
            return -1
        return sum(p["epochs_done"] + p["done"] for p in state["phases"].values())

    def _load_state(self) -> dict[str, Any]:
        local = storage.read_json(self.work / "state.json")
        if self.remote_backup:
            remote = storage.read_json(storage.join(self.backup_url, "state.json"))
            if self._score(remote) > self._score(local):
                # A fresh VM (or a wiped cache): the bucket's backup is ahead; mirror it.
                storage.download_tree(self.backup_url, self.work, progress=False)
                local = storage.read_json(self.work / "state.json")
        if local is None:
            return self._new_state()
        if local.get("fingerprint") != self.config.fingerprint():
            raise ValueError(
                f"{self.config.out} holds a run started with different options (see its "
                "config.json); rerun with those options to resume, or choose another --out"
            )
        print(f"resuming the run in {self.config.out} ({self._describe(local)})")
        return local

    @staticmethod
    def _describe(state: dict[str, Any]) -> str:
        parts = [
            f"{name}: {'done' if p['done'] else str(p['epochs_done']) + ' epochs'}"
            for name, p in state["phases"].items()
        ]
        return ", ".join(parts) or "nothing finished yet"

    def phase(self, name: str) -> dict[str, Any]:
        return self.state["phases"].setdefault(
            name,
            {
                "epochs_done": 0,
                "done": False,
                "stopped": False,
                "best": None,
                "wait": 0,
                "seconds": 0.0,
                "images": 0,
            },
        )

    def save(self) -> None:
        """Writes state.json after the weights it names, then mirrors the folder to the bucket."""
        storage.write_json(self.work / "state.json", self.state)
        if self.remote_backup:
            storage.upload_tree(
                self.work,
                self.backup_url,
                workers=self.config.workers,
                include=lambda name: (
                    name != "state.json" and not name.startswith(f"{LOCAL_ONLY_DIR}/")
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
                f"{FAIL_AFTER_ENV}={self.fail_after}: stopping after {self.epochs_this_process} "
                "epoch(s); run the same command again to resume"
            )

    # --- progress.json ---------------------------------------------------------------------
    def progress(
        self,
        state: str,
        phase: str,
        epoch: int,
        epochs: int,
        metrics: dict[str, float] | None = None,
        eta_seconds: float | None = None,
        images_per_second: float | None = None,
        error: str | None = None,
    ) -> None:
        """progress.json as docs/ARCHITECTURE.md specifies, for `workload status`.

        A failed run adds `error` (the exception's message), which `workload status` shows."""
        document: dict[str, Any] = {
            "version": PROGRESS_VERSION,
            "updated": _now(),
            "state": state,
            "recipe": self.config.recipe,
            "phase": phase,
            "epoch": epoch,
            "epochs": epochs,
            "metrics": metrics or {},
            "eta_seconds": eta_seconds,
            "images_per_second": images_per_second,
        }
        if error is not None:
            document["error"] = error
        storage.write_json(storage.join(self.config.out, "progress.json"), document)

    def put(self, name: str, data: bytes | str) -> None:
        """Writes one result file under --out."""
        payload = data.encode() if isinstance(data, str) else data
        storage.write_bytes(storage.join(self.config.out, name), payload)
