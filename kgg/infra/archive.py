"""The workload archive: the code the VM runs, packed deterministically.

Same sources give the same bytes (sorted entries, fixed mtimes, owners and modes, no caches), so
its SHA-256 changes only when the code does, and the VM reinstalls only then. The files are the
ones git lists: a git-ignored file next to the code (`kgg/.env`, a key) never reaches the
bucket, where every notebook user can read it. A symbolic link is refused, never followed: a link
in the checkout (`kgg/notes.txt -> ~/.ssh/id_ed25519`) would ship what it points to.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import stat
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from kgg.common.contract import CLI_NAME, CODE_PREFIX
from kgg.common.errors import UserError
from kgg.infra.stack_config import PROJECT_ROOT

# The package the VM runs, less the room only `pulumi up` runs: a change to the stack's code then
# does not replace the VM's.
ARCHIVED_DIRS = (CLI_NAME,)
NOT_ARCHIVED = ("kgg/infra/",)
ARCHIVED_FILES = ("pyproject.toml", "uv.lock")
_SKIPPED_PARTS = {"__pycache__", ".ipynb_checkpoints", ".pytest_cache", ".ruff_cache"}
_SKIPPED_SUFFIXES = {".pyc", ".pyo"}
GIT_SYMLINK_MODE = "120000"


class ArchiveError(UserError, RuntimeError):
    """The code archive cannot be built; the message says what to fix."""


@dataclass(frozen=True)
class WorkloadArchive:
    data: bytes
    sha256: str
    files: tuple[str, ...]

    @property
    def object_name(self) -> str:
        return f"{CODE_PREFIX}workload-{self.sha256[:16]}.tar.gz"


def _git_files(root: Path, pathspecs: tuple[str, ...]) -> list[str]:
    """Files under `pathspecs` that git tracks, or would track: new files count, ignored do not."""
    command = ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others"]
    try:
        listed = subprocess.run(
            [*command, "--exclude-standard", "--", *pathspecs],
            capture_output=True,
            check=True,
            text=True,
        )
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", "") or str(error)
        raise ArchiveError(
            f"cannot list the code to ship with `git ls-files` in {root} ({detail.strip()}); "
            "run pulumi from a git clone of the project, with git installed"
        ) from None
    return [name for name in listed.stdout.split("\0") if name]


def _git_links(root: Path, pathspecs: tuple[str, ...]) -> set[str]:
    """Tracked paths under `pathspecs` that git records as symbolic links (mode 120000), also
    where the work tree holds them as plain files (core.symlinks=false)."""
    command = ["git", "-C", str(root), "ls-files", "-z", "--stage", "--", *pathspecs]
    try:
        listed = subprocess.run(command, capture_output=True, check=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return set()  # _git_files already said why git cannot list the checkout
    entries = (entry.partition("\t") for entry in listed.stdout.split("\0") if entry)
    return {name for info, _, name in entries if info.split(" ", 1)[0] == GIT_SYMLINK_MODE}


def _links_on_the_way(root: Path, relative: Path) -> list[str]:
    """Each component of `relative` under `root` that is a symbolic link (lstat: never followed)."""
    links = []
    for depth in range(1, len(relative.parts) + 1):
        part = Path(*relative.parts[:depth])
        try:
            if stat.S_ISLNK((root / part).lstat().st_mode):
                links.append(part.as_posix())
        except FileNotFoundError:
            break
    return links


def archived_files(root: Path = PROJECT_ROOT) -> list[str]:
    """Relative paths that go into the archive, sorted: `git ls-files` under ARCHIVED_DIRS plus
    ARCHIVED_FILES, without caches. ArchiveError names any symbolic link among them (or on their
    way): its target, a key or anything else on the laptop, would reach the bucket."""
    pathspecs = (*ARCHIVED_DIRS, *ARCHIVED_FILES)
    paths: set[str] = set()
    links = _git_links(root, pathspecs)
    for name in _git_files(root, pathspecs):
        relative = Path(name)
        links.update(_links_on_the_way(root, relative))
        # A tracked file deleted in the work tree is listed too.
        if (root / relative).is_file() and not (
            _SKIPPED_PARTS & set(relative.parts)
            or relative.suffix in _SKIPPED_SUFFIXES
            or name.startswith(NOT_ARCHIVED)
        ):
            paths.add(relative.as_posix())
    if links:
        raise ArchiveError(
            f"the code to ship holds symbolic links: {', '.join(sorted(links))}; the VM would get "
            "what they point to. Replace each with the file itself, or remove it (git rm) or "
            "git-ignore it"
        )
    return sorted(paths)


def build_archive(root: Path = PROJECT_ROOT) -> WorkloadArchive:
    files = archived_files(root)
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in files:
            content = (root / name).read_bytes()
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(content))
    # mtime=0 and no file name keep the gzip header identical across builds.
    data = gzip.compress(tar_bytes.getvalue(), compresslevel=9, mtime=0)
    return WorkloadArchive(data=data, sha256=hashlib.sha256(data).hexdigest(), files=tuple(files))


def write_archive(archive: WorkloadArchive, build_dir: Path) -> Path:
    """Writes the archive where Pulumi can upload it as a FileAsset; returns the path."""
    build_dir.mkdir(parents=True, exist_ok=True)
    path = build_dir / Path(archive.object_name).name
    if not path.exists() or path.read_bytes() != archive.data:
        path.write_bytes(archive.data)
    return path
