"""Disk space, checked before a cache is written: a run that cannot fit stops in one line naming
what it needs, what is free and how to make room, instead of dying half way through a 7 GB file
(or, written through a memory map, with SIGBUS).

The check leaves a little room for the system (the VM's journal and logs live on the same boot
disk); a rerun after space was freed goes on from the caches already whole.
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

# Left free for the system: a root disk filled to its last block stops journald and the log
# sync. At most 5% of a small filesystem (the tests' few-MB tmpfs).
SYSTEM_ROOM = 512 * 1024**2
SYSTEM_SHARE = 0.05
# How to get more room on the VM: the stack setting of its boot disk (README "Configuration").
DISK_SETTING = "pulumi config set bootDiskSizeGb 200 && pulumi up"


class DiskSpaceError(ValueError):
    """A cache does not fit on its disk; the message names the need, the free space and fixes."""


@dataclass(frozen=True)
class Need:
    """`bytes` to be written under `folder`, for `what`; `option` is the flag that moves it."""

    folder: Path
    bytes: int
    what: str
    option: str = "--cache-dir"


def existing_parent(path: Path) -> Path:
    """`path` or its nearest parent that exists (where the free space is read)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def room(folder: Path) -> tuple[int, int]:
    """(free bytes a process may use, the bytes kept for the system) on `folder`'s filesystem."""
    usage = shutil.disk_usage(existing_parent(folder))
    return usage.free, min(SYSTEM_ROOM, int(usage.total * SYSTEM_SHARE))


def require(needs: list[Need]) -> None:
    """Raises DiskSpaceError when the needs of one filesystem exceed its free space (minus the
    system's room); needs on different filesystems are checked apart."""
    by_device: dict[int, list[Need]] = {}
    for need in needs:
        if need.bytes > 0:
            device = os.stat(existing_parent(need.folder)).st_dev
            by_device.setdefault(device, []).append(need)
    for group in by_device.values():
        total = sum(need.bytes for need in group)
        free, kept = room(group[0].folder)
        if total > free - kept:
            raise DiskSpaceError(message(group, free, kept))


def message(needs: list[Need], free: int, kept: int) -> str:
    """The one line of a refusal: the need, the free space, and the ways out."""
    what = " and ".join(f"{need.what} ({_size(need.bytes)})" for need in needs)
    folder = needs[0].folder
    options = sorted({need.option for need in needs})
    moved = " or ".join(options)
    return (
        f"not enough disk space: {what} need {_size(sum(n.bytes for n in needs))} under "
        f"{folder}, but {_size(free)} is free there ({_size(kept)} of it kept for the system); "
        f"free some space and run the same command again (it goes on from what is cached), "
        f"put the cache on a bigger disk with {moved}, or on the VM give it a bigger boot disk "
        f"({DISK_SETTING})"
    )


def full(need: Need, error: OSError) -> DiskSpaceError:
    """The same line for a write that found the disk full (another process took the space, or a
    filesystem that cannot reserve blocks ahead)."""
    free, kept = room(need.folder)
    return DiskSpaceError(f"{message([need], free, kept)} ({os.strerror(error.errno or 0)})")


def is_full(error: OSError) -> bool:
    return error.errno in (errno.ENOSPC, errno.EDQUOT)


def _size(count: int) -> str:
    if count >= 1e9:
        return f"{count / 1e9:.1f} GB"
    if count >= 1e6:
        return f"{count / 1e6:.1f} MB"
    return f"{count / 1e3:.0f} kB"
