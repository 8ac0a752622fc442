"""The notebook user's workspace (/home/jupyter/work) kept in the bucket (gs://B/workspace/), so a
VM recreated on a new disk, in another zone, finds it: restored at boot (missing files only: a
local file is never replaced, nor deleted), synced every minute (new, changed and deleted files)
and once more when the VM stops. It runs as the notebook user (`python -m kgg.agent workspace
...`), and so does making the folder and copying the walkthrough into it (`workspace prepare`):
root never walks or writes the user's files, whatever links the user puts there, and the
bucket's object names go through `kgg.common.storage.local_path` (the bucket is not trusted)."""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from kgg.agent.config import NOTEBOOK_USER, Paths
from kgg.common import storage

# Not worth keeping (Jupyter's own checkpoints, caches) or too big for a notebook's workspace.
SKIPPED_DIRS = frozenset({".ipynb_checkpoints", "__pycache__", ".cache"})
MAX_FILE_BYTES = 1 << 30
# A restore stops at this much (the sync never sends a file over MAX_FILE_BYTES either): more
# is a bucket writer filling the boot disk, not a workspace.
MAX_RESTORE_BYTES = 10 << 30
RESTORE_WORKERS = 4
SYNC_SECONDS = 60
# At shutdown (a spot VM has 30 s' notice) one last sync gets this long.
FINAL_SYNC_SECONDS = 20


@dataclass
class SyncReport:
    uploaded: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    restored: int = 0
    notes: list[str] = field(default_factory=list)
    too_big: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # restore: local files kept over the bucket's
    unfinished: bool = False  # the deadline came first (restore: its size bound)

    def summary(self) -> str:
        parts = [*self.notes, f"{len(self.uploaded)} uploaded", f"{len(self.deleted)} deleted"]
        if self.too_big:
            parts.append(f"over 1 GiB, not kept: {', '.join(self.too_big)}")
        if self.unfinished:
            parts.append("stopped at its deadline")
        return "; ".join(parts)


def workspace_command(paths: Paths, *args: str) -> list[str]:
    """`python -m kgg.agent workspace ...` as the notebook user, as root runs it."""
    return [
        "runuser", "-u", NOTEBOOK_USER, "--", "env", f"HOME={paths.on_vm(paths.notebook_home)}",
        f"PYTHONPATH={paths.on_vm(paths.app)}", paths.on_vm(paths.venv_python),
        "-m", "kgg.agent", "workspace", *args,
    ]  # fmt: skip


def ensure_folder(root: Path) -> str:
    """`root` as a real folder of its own: a link or a file in its place (`ln -s ... ~/work` from a
    Jupyter terminal) is moved aside, never followed. Returns a note when it moved one."""
    note = ""
    if root.is_symlink() or (root.exists() and not root.is_dir()):
        aside = root.with_name(f"{root.name}.moved-{int(time.time())}")
        root.rename(aside)  # renames the link itself, never what it points to
        note = f"{root} was not a folder: moved to {aside}, and a new workspace made"
    root.mkdir(exist_ok=True)
    return note


def prepare(root: Path, walkthrough: Path | None = None) -> list[str]:
    """The workspace folder, and the walkthrough notebook copied into it once (the user's edits
    survive reboots and code updates; a link the user put in its place stays theirs). Runs as the
    notebook user: the kernel, not a check, keeps it inside what that user may write."""
    notes = [note] if (note := ensure_folder(root)) else []
    if walkthrough is not None and walkthrough.is_file():
        target = root / walkthrough.name
        try:
            with target.open("x") as copy:  # O_CREAT|O_EXCL: never through a link
                copy.write(walkthrough.read_text())
            notes.append(f"copied {walkthrough.name} into {root}")
        except FileExistsError:
            pass
        except OSError as error:  # swapped for a link to somewhere the user may not write
            notes.append(f"{walkthrough.name} not copied: {error}")
    return notes


def skipped(name: str) -> bool:
    return any(part in SKIPPED_DIRS for part in name.split("/")[:-1])


def local_files(root: Path) -> Iterator[tuple[str, Path]]:
    """(relative name, path) of the workspace's regular files: links are never followed."""
    for directory, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            name
            for name in dirnames
            if name not in SKIPPED_DIRS and not Path(directory, name).is_symlink()
        )
        for filename in sorted(filenames):
            path = Path(directory, filename)
            if path.is_symlink() or not path.is_file():
                continue
            yield path.relative_to(root).as_posix(), path


def conflict_name(name: str, updated: datetime | None) -> str:
    """Where the bucket's newer copy of a file kept locally goes: `a/b.ipynb` ->
    `a/b.bucket-20261127T100000Z.ipynb` (Jupyter still opens it)."""
    folder, _, filename = name.rpartition("/")
    stem, dot, suffix = filename.rpartition(".")
    if not stem:  # no suffix (or a dot file)
        stem, dot, suffix = filename, "", ""
    stamp = (updated or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    copy = f"{stem}.bucket-{stamp}{dot}{suffix}"
    return f"{folder}/{copy}" if folder else copy


def _restore_one(report: SyncReport, root: Path, info: storage.ObjectInfo) -> str | None:
    """The local name to download `info` to, or None (with a note) when it is refused or a local
    file is there, which is never replaced. The newer of the two is kept either way: the
    bucket's newer copy goes beside the local file."""
    try:
        target = storage.local_path(root, info.name)
    except storage.UnsafeNameError as error:
        report.notes.append(f"refused an object of the bucket: {error}")
        return None
    if info.size > MAX_FILE_BYTES:
        report.too_big.append(info.name)
        return None
    if not (target.exists() or target.is_symlink()):
        return info.name
    if target.is_file() and not target.is_symlink():
        if target.stat().st_size == info.size and storage.local_md5(target) == info.md5:
            return None
        local = datetime.fromtimestamp(target.stat().st_mtime, UTC)
        if info.updated is not None and info.updated > local:
            aside = conflict_name(info.name, info.updated)
            report.kept.append(info.name)
            report.notes.append(
                f"kept the local {info.name}; the bucket's copy is newer (written "
                f"{info.updated:%Y-%m-%d %H:%M} UTC, by another writer?): saved as {aside}"
            )
            return None if storage.local_path(root, aside).exists() else aside
    report.kept.append(info.name)
    report.notes.append(f"kept the local {info.name} (newer than the bucket's copy, or no file)")
    return None


def restore(root: Path, url: str, max_bytes: int = MAX_RESTORE_BYTES) -> SyncReport:
    """Only files missing locally come back: a local file is never replaced (a VM restarted in
    place may hold edits not synced yet; anyone who may write the bucket could have changed its
    copy), nor deleted. A conflict keeps both, newer and older, and says so. Stops at `max_bytes`
    with what it restored."""
    note = ensure_folder(root)
    report = SyncReport(notes=[note] if note else [])
    jobs = []
    total = 0
    objects = [info for info in storage.list_objects(url) if not skipped(info.name)]
    for index, info in enumerate(objects):
        local = _restore_one(report, root, info)
        if local is None:
            continue
        if total + info.size > max_bytes:
            report.unfinished = True
            report.notes.append(
                f"stopped at {max_bytes / (1 << 30):g} GiB: {len(objects) - index} object(s) of "
                f"{url}/ not restored (more than a workspace holds: check who may write it)"
            )
            break
        total += info.size
        source, target = storage.join(url, info.name), storage.local_path(root, local)
        jobs.append(functools.partial(storage.download_file, source, target))
    with ThreadPoolExecutor(max_workers=RESTORE_WORKERS) as pool:
        for future in [pool.submit(job) for job in jobs]:
            future.result()
    report.restored = len(jobs)
    return report


def sync(root: Path, url: str, deadline: float | None = None) -> SyncReport:
    """New and changed files go up, deleted files' objects go; stops at `deadline`
    (time.monotonic) with what is done."""
    report = SyncReport()
    if root.is_symlink() or not root.is_dir():
        # Swapped for a link since the boot made it: never mirror what it points to (nor delete
        # the bucket's copies because the files seem gone).
        report.notes.append(f"{root} is not a folder (a link?): nothing synced")
        return report
    remote = {info.name: info for info in storage.list_objects(url) if not skipped(info.name)}
    present = set()
    for name, path in local_files(root):
        present.add(name)
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            report.too_big.append(name)
            continue
        known = remote.get(name)
        if known is not None and known.size == size and known.md5 == storage.local_md5(path):
            continue
        if deadline is not None and time.monotonic() > deadline:
            report.unfinished = True
            return report
        storage.upload_file(path, storage.join(url, name))
        report.uploaded.append(name)
    for name in sorted(set(remote) - present - set(report.too_big)):
        if deadline is not None and time.monotonic() > deadline:
            report.unfinished = True
            break
        storage.delete_file(storage.join(url, name))
        report.deleted.append(name)
    return report
