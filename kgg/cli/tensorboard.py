"""`kgg tensorboard [RUN|all]`: a run's TensorBoard event files, mirrored from the bucket into
a local cache, and TensorBoard on that cache.

The mirror copies only what changed (size and MD5), so running it again, or refreshing while
TensorBoard runs, fetches only the epochs written since. Object names come from the bucket and go
through storage.local_path: none lands outside the cache. TensorBoard itself runs as its own
process (`python -m tensorboard.main`): it may import TensorFlow; this command never does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from kgg.cli.results import (
    RunNotFoundError,
    list_runs,
    refuse_oversized,
    resolve_run,
    runs_url,
)
from kgg.common import storage
from kgg.common.contract import TENSORBOARD_DIR
from kgg.common.errors import UserError
from kgg.common.terminal import printable

ALL = "all"
# What one mirror downloads at most: a run's event files are kilobytes per epoch.
MAX_MIRROR_BYTES = 2 * 10**9
INSTALL_FIX = "uv sync --group tensorboard"
APP_CACHE = "keras-gpu-gcp"


class TensorBoardMissingError(UserError, RuntimeError):
    """The tensorboard package is not installed; the message names the install command."""


@dataclass
class Mirror:
    """What one mirror did: the folder TensorBoard reads, the runs mirrored, the copy counts."""

    logdir: Path
    runs: list[str] = field(default_factory=list)
    stats: storage.SyncStats = field(default_factory=storage.SyncStats)


def default_cache() -> Path:
    """$XDG_CACHE_HOME/keras-gpu-gcp/tensorboard (~/.cache/... when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base, APP_CACHE, TENSORBOARD_DIR)


def runs_with_event_files(bucket: str) -> list[str]:
    """Run ids that have a tensorboard/ folder, oldest first (as `runs` lists them)."""
    with_events = {
        info.name.split("/", 1)[0]
        for info in storage.list_objects(runs_url(bucket))
        if info.name.split("/")[1:2] == [TENSORBOARD_DIR]
    }
    return [run.run_id for run in list_runs(bucket) if run.run_id in with_events]


def mirror(bucket: str, run: str, cache: str | os.PathLike[str], progress: bool = False) -> Mirror:
    """Mirrors runs/<run>/tensorboard/ (`latest`: the newest run; `all`: every run's) into
    <cache>/<bucket>/<run>/; the logdir is the run's folder, or the bucket's for `all`."""
    bucket_dir = storage.local_path(cache, bucket)
    if run == ALL:
        run_ids = runs_with_event_files(bucket)
        if not run_ids:
            raise RunNotFoundError(f"no run in {runs_url(bucket)}/ has TensorBoard files yet")
        result = Mirror(bucket_dir)
    else:
        run_ids = [resolve_run(bucket, run)]
        result = Mirror(storage.local_path(bucket_dir, run_ids[0]))
    sources = [f"{runs_url(bucket)}/{run_id}/{TENSORBOARD_DIR}" for run_id in run_ids]
    listings = [storage.list_objects(source) for source in sources]
    for source, listing in zip(sources, listings, strict=True):
        refuse_oversized(
            source, listing, MAX_MIRROR_BYTES, "the TensorBoard mirror",
            "copy what you need with `gcloud storage cp -r` instead",
        )  # fmt: skip
    for run_id, source, listing in zip(run_ids, sources, listings, strict=True):
        stats = storage.download_tree(
            source, storage.local_path(bucket_dir, run_id), progress=progress, listing=listing
        )
        result.runs.append(run_id)
        for name in ("copied", "skipped", "bytes", "refused"):
            setattr(result.stats, name, getattr(result.stats, name) + getattr(stats, name))
    if run != ALL and not result.logdir.is_dir():
        raise RunNotFoundError(
            f"run {run_ids[0]!r} has no TensorBoard files in {runs_url(bucket)}/{run_ids[0]}/"
            f"{TENSORBOARD_DIR}/ yet (they appear after its first training epoch)"
        )
    return result


def render_mirror(result: Mirror) -> str:
    stats = result.stats
    line = (
        f"{', '.join(result.runs)} -> {result.logdir}: downloaded {stats.copied} files "
        f"({stats.bytes / 1e6:.1f} MB), {stats.skipped} already up to date"
    )
    if stats.refused:
        line += f"; refused {stats.refused} objects whose names lead outside the cache"
    return printable(line)  # run ids are object names: the bucket's text


def require_tensorboard() -> None:
    """Raises TensorBoardMissingError unless the tensorboard package can be imported."""
    try:
        import tensorboard  # noqa: F401  (lazy package: imports no TensorFlow)
    except ImportError as error:
        raise TensorBoardMissingError(
            f"TensorBoard is not installed ({error}); install it with `{INSTALL_FIX}`, "
            "or only mirror the files with --no-serve"
        ) from None


def server_command(logdir: Path, port: int) -> list[str]:
    """TensorBoard on 127.0.0.1 only: the event files are the run's, not the network's."""
    return [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir),
            "--port", str(port), "--host", "127.0.0.1"]  # fmt: skip


def serve(bucket: str, run: str, cache: Path, port: int, refresh_seconds: float) -> int:
    """Runs TensorBoard on the mirror until it exits or Ctrl-C; mirrors again every
    `refresh_seconds` (0: never) so a running training shows its new epochs. Ctrl-C only sets a
    flag the loop checks: raised inside a mirror's transfer threads and locks, it could leave the
    command hanging at exit instead of stopping."""
    result = mirror(bucket, run, cache)
    print(render_mirror(result))
    print(f"TensorBoard on http://localhost:{port}/ (Ctrl-C stops it)", flush=True)
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    server = subprocess.Popen(server_command(result.logdir, port))
    try:
        while server.poll() is None and not stop.wait(refresh_seconds or 0.5):
            if refresh_seconds <= 0:
                continue
            try:
                mirror(bucket, run, cache)
            except storage.StorageError as error:  # the next refresh may reach it again
                print(printable(f"(mirror skipped: {error})"), file=sys.stderr)
    finally:
        signal.signal(signal.SIGINT, previous)
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
    if stop.is_set():
        print("\nstopping TensorBoard", flush=True)
        return 130
    return server.returncode
