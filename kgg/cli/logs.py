"""`kgg logs [startup|train|RUN] [-f]`: the VM's logs from the bucket, where the VM
mirrors them every few seconds (kgg/agent/logsync.py), so they read the same while the VM runs
and once it is gone. `-f` polls the object's generation and reads, by range, only what a new
generation added, until the boot or the run ends. Reads are bounded: a long log shows its last
TAIL_BYTES, and each poll reads at most CHUNK_BYTES (the rest at the next)."""

from __future__ import annotations

import codecs
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from kgg.cli.results import LATEST, resolve_run
from kgg.cli.status import fetch_documents, parse_progress, parse_startup
from kgg.common import storage
from kgg.common.contract import (
    PROGRESS_FILE,
    RUNS_PREFIX,
    STARTUP_LOG_OBJECT,
    STATUS_OBJECT,
    TRAIN_LOG_FILE,
    ContractError,
    check_run_id,
)
from kgg.common.errors import UserError
from kgg.common.terminal import printable

STARTUP = "startup"
TRAIN = "train"
FOLLOW_SECONDS = 5.0
ENDED_RUN_STATES = {"done": 0, "failed": 1}
# A log read from its start shows this much of its end; a poll reads at most CHUNK_BYTES.
TAIL_BYTES = 1 << 20
CHUNK_BYTES = 8 << 20


class LogNotFoundError(UserError, LookupError):
    """No such log in the bucket (yet)."""


@dataclass(frozen=True)
class LogSource:
    """One log in the bucket and how to tell that what writes it has finished: None while it
    runs, else the exit code to end with (0 done, 1 failed)."""

    url: str
    label: str
    ended: Callable[[], int | None]


def _run_ended(bucket: str, run_id: str) -> Callable[[], int | None]:
    def ended() -> int | None:
        progress = parse_progress(
            storage.read_limited(f"gs://{bucket}/{RUNS_PREFIX}{run_id}/{PROGRESS_FILE}")
        )
        return ENDED_RUN_STATES.get(progress.state) if progress and progress.state else None

    return ended


def _boot_ended(bucket: str) -> int | None:
    startup = parse_startup(storage.read_limited(f"gs://{bucket}/{STATUS_OBJECT}"))
    if startup is None:
        return None
    if startup.phase == "failed":
        return 1
    return 0 if startup.steps["idle"].state in ("done", "skipped") else None


def log_source(bucket: str, which: str) -> LogSource:
    """`startup`, `train` (the VM's current run, else the latest), a run id (or `latest`), or a
    sweep's trial as SWEEP/TRIAL."""
    if which == STARTUP:
        return LogSource(
            f"gs://{bucket}/{STARTUP_LOG_OBJECT}", "the startup log", lambda: _boot_ended(bucket)
        )
    if which == TRAIN:
        startup, _ = fetch_documents(bucket)
        run_id = startup.run_id if startup and startup.run_id else resolve_run(bucket, LATEST)
    elif which == LATEST:
        run_id = resolve_run(bucket, LATEST)
    else:
        run_id = which
    try:
        # A sweep's trial is SWEEP/TRIAL: its folder is runs/SWEEP/TRIAL/ (no . or .. parts).
        parts = run_id.split("/", 1)
        if len(parts) != 2 or not all(part.strip(".") for part in parts):
            parts = [run_id]
        for part in parts:
            check_run_id(part, source="", fix="see `kgg runs`")
    except ContractError as error:
        raise LogNotFoundError(str(error)) from None
    return LogSource(
        f"gs://{bucket}/{RUNS_PREFIX}{run_id}/{TRAIN_LOG_FILE}",
        f"run {run_id}'s training log",
        _run_ended(bucket, run_id),
    )


@dataclass
class Follower:
    """Reads what each new generation of a growing object added; an object that shrank was
    replaced (a new VM's startup log) and is read again from its start."""

    url: str
    generation: int | None = None
    offset: int = 0

    def __post_init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def poll(self) -> tuple[str, bool]:
        """(new text, whether the object started over). A log read from its start, or started
        over, begins with its last TAIL_BYTES (from a line's start, after a note saying so);
        what a generation added is read by range, CHUNK_BYTES at most per poll."""
        current = storage.generation(self.url)
        if current is None:
            return "", False
        generation, size = current
        if generation == self.generation and self.offset >= size:
            return "", False
        restarted = self.generation is not None and size < self.offset
        start = 0 if restarted else self.offset
        if restarted:
            self._decoder.reset()
        skipped = size - TAIL_BYTES if start == 0 and size > TAIL_BYTES else 0
        start = max(start, skipped)
        end = min(size, start + CHUNK_BYTES) - 1
        data = storage.read_from(self.url, start, generation, end) if size > start else b""
        if data is None:  # replaced between the two calls: the next poll sees the new one
            return "", False
        self.generation, self.offset = generation, start + len(data)
        note = ""
        if skipped:
            newline = data.find(b"\n")
            data = data[newline + 1 :] if newline >= 0 else data
            note = (
                f"--- the log's first {skipped / 1e6:.1f} MB are not shown (all of it: "
                f"gcloud storage cat {self.url}) ---\n"
            )
        return note + printable(self._decoder.decode(data), multiline=True), restarted


def print_log(source: LogSource, out: TextIO) -> int:
    text, _ = Follower(source.url).poll()
    if not text and storage.generation(source.url) is None:
        raise LogNotFoundError(
            f"no {source.label} at {source.url} yet: the VM writes it once it runs (`kgg status`)"
        )
    out.write(text)
    out.flush()
    return 0


def follow(
    source: LogSource,
    out: TextIO,
    *,
    interval: float = FOLLOW_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Prints the log and what is added to it until its writer ends (then its exit code)."""
    follower = Follower(source.url)
    waiting_said = False
    while True:
        ended = source.ended()  # before reading: the last lines are read after the end
        text, restarted = follower.poll()
        if restarted:
            out.write(f"\n--- {source.label} started over (a new VM) ---\n")
        if text:
            out.write(text)
            out.flush()
        elif follower.generation is None and not waiting_said:
            out.write(f"(waiting for {source.url}; Ctrl-C stops)\n")
            out.flush()
            waiting_said = True
        if ended is not None:
            return ended
        sleep(interval)
