"""The notebook user's workspace (/home/jupyter/work) kept in the bucket (gs://B/workspace/), so a
VM recreated on a new disk, in another zone, finds it: restored at boot (missing or different
files; nothing deleted locally), synced every minute (new, changed and deleted files) and once
more when the VM stops. It runs as the notebook user (`python -m startup.vm workspace ...`), and
so does making the folder and copying the walkthrough into it (`workspace prepare`): root never
walks or writes the user's files, whatever links the user puts there, and the bucket's object
names go through `workload.storage.local_path` (the bucket is not trusted)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from startup.vm.config import NOTEBOOK_USER, Paths
from workload import storage

# Not worth keeping (Jupyter's own checkpoints, caches) or too big for a notebook's workspace.
SKIPPED_DIRS = frozenset({".ipynb_checkpoints", "__pycache__", ".cache"})
MAX_FILE_BYTES = 1 << 30
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
    unfinished: bool = False  # the deadline came first

    def summary(self) -> str:
        parts = [*self.notes, f"{len(self.uploaded)} uploaded", f"{len(self.deleted)} deleted"]
        if self.too_big:
            parts.append(f"over 1 GiB, not kept: {', '.join(self.too_big)}")
        if self.unfinished:
            parts.append("stopped at its deadline")
        return "; ".join(parts)


def workspace_command(paths: Paths, *args: str) -> list[str]:
    """`python -m startup.vm workspace ...` as the notebook user, as root runs it."""
    return [
        "runuser", "-u", NOTEBOOK_USER, "--", "env", f"HOME={paths.on_vm(paths.notebook_home)}",
        f"PYTHONPATH={paths.on_vm(paths.app)}", paths.on_vm(paths.venv_python),
        "-m", "startup.vm", "workspace", *args,
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


def restore(root: Path, url: str) -> SyncReport:
    """Objects missing or different locally come back; local files are never deleted (a VM
    restarted in place may hold changes not synced yet)."""
    note = ensure_folder(root)
    stats = storage.download_tree(
        url, root, workers=4, progress=False, include=lambda name: not skipped(name)
    )
    return SyncReport(restored=stats.copied, notes=[note] if note else [])


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
