"""The data folder: its train/ and test/ folders and their files, the data's identity (its
content, so a run and its caches notice when the data under the same path changed), and the
local mirror of a gs:// data prefix.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kgg.common import storage
from kgg.common.contract import MANIFEST_NAME
from kgg.job import diskspace

SPLIT_DIRS = ("train", "test")


class DataError(ValueError):
    """The data folder cannot be trained on; the message names the path and what was expected."""


def find_split_dirs(root: Path) -> tuple[Path, Path | None]:
    """The train and (optional) test folders of a data root, matched case-insensitively.

    The 2018 guide's bucket used `Train/` and `Test/`; Kaggle's zip uses `train/` and `test/`.
    They must be folders, not links: a link would take the data from outside --data."""
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist; expected train/<class>/*.png")
    entries = {p.name.lower(): p for p in sorted(root.iterdir()) if p.name.lower() in SPLIT_DIRS}
    for path in entries.values():
        if path.is_symlink():
            raise DataError(
                f"{path} is a link to {os.readlink(path)}; links are not followed: point --data "
                "at the folder that holds the real train/ and test/"
            )
    subdirs = {name: p for name, p in entries.items() if p.is_dir()}
    train = subdirs.get("train")
    if train is None:
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise DataError(
            f"no train/ folder in {root} (found {found or 'nothing'}); "
            "expected train/<class>/*.png and optionally test/*.png"
        )
    return train, subdirs.get("test")


def walk_files(folder: Path, root: Path | None = None) -> tuple[list[str], list[dict[str, str]]]:
    """Regular files under `folder` (relative, sorted) and the entries skipped, with why.

    Links to folders are never followed: `train/Loop -> ..` would make a class of the whole data
    set, test images included, and a link out of the data root reads what was never meant as
    data. Links to files inside `root` (default: `folder`) are followed; links out of it, broken
    links, loops and special files are skipped, as `kgg upload` skips links out of it."""
    root = (root or folder).resolve()
    files: list[str] = []
    skipped: list[dict[str, str]] = []
    pending = [folder]
    while pending:
        current = pending.pop()
        for entry in sorted(os.scandir(current), key=lambda e: e.name):
            if _hidden(entry.name):
                continue
            relative = Path(entry.path).relative_to(folder).as_posix()
            reason = _not_followed(Path(entry.path), root) if entry.is_symlink() else None
            if reason is not None:
                skipped.append({"file": f"{folder.name}/{relative}", "reason": reason})
            elif entry.is_dir(follow_symlinks=False):
                pending.append(Path(entry.path))
            elif entry.is_file():
                files.append(relative)
            else:
                skipped.append({"file": f"{folder.name}/{relative}", "reason": "not a file"})
    return sorted(files), sorted(skipped, key=lambda item: item["file"])


def _not_followed(link: Path, root: Path) -> str | None:
    """Why a link is skipped, or None for a link to a regular file inside `root` (followed)."""
    target = os.readlink(link)
    try:
        resolved = link.resolve(strict=True)
    except FileNotFoundError:
        return f"broken link to {target}"
    except (RuntimeError, OSError):  # RuntimeError: a loop (Python 3.11/3.12), OSError: ELOOP
        return f"link loop through {target}"
    if resolved.is_dir():
        return f"link to the folder {target}, not followed"
    if not resolved.is_relative_to(root):
        return f"link to {target}, outside the data folder"
    return None if resolved.is_file() else f"link to {target}, not a file"


def discover_train(train_dir: Path) -> tuple[list[str], list[int], list[str], list[dict[str, str]]]:
    """Files (relative to train_dir), labels and class names from `train/<class>/*`.

    Files outside class folders and links to folders are listed as skipped. Raises DataError for
    an empty class folder, fewer than two classes, or no files at all."""
    entries, skipped = _top_level(train_dir, train_dir.parent.resolve())
    class_dirs = [p for p in entries if p.is_dir()]
    skipped += [
        {"file": f"{train_dir.name}/{p.name}", "reason": "not inside a class folder"}
        for p in entries
        if p.is_file()
    ]
    if len(class_dirs) < 2:
        raise DataError(
            f"{train_dir} has {len(class_dirs)} class folder(s) "
            f"({[p.name for p in class_dirs]}); need at least 2, as train/<class>/*.png"
        )
    files: list[str] = []
    labels: list[int] = []
    for index, class_dir in enumerate(class_dirs):
        members, not_followed = walk_files(class_dir, train_dir.parent)
        skipped += [{**item, "file": f"{train_dir.name}/{item['file']}"} for item in not_followed]
        if not members:
            raise DataError(f"class folder {class_dir} is empty; remove it or add its images")
        files.extend(f"{class_dir.name}/{name}" for name in members)
        labels.extend([index] * len(members))
    return files, labels, [p.name for p in class_dirs], skipped


def _top_level(folder: Path, root: Path) -> tuple[list[Path], list[dict[str, str]]]:
    """The visible entries of one folder level; links other than to files listed as skipped."""
    kept: list[Path] = []
    skipped: list[dict[str, str]] = []
    for path in sorted(folder.iterdir()):
        if _hidden(path.name):
            continue
        reason = _not_followed(path, root) if path.is_symlink() else None
        if reason is None:
            kept.append(path)
        else:
            skipped.append({"file": f"{folder.name}/{path.name}", "reason": reason})
    return kept, skipped


def discover_test(test_dir: Path) -> list[str]:
    """Test files (relative to test_dir), sorted, for submission.csv and predict."""
    return walk_files(test_dir)[0]


def submission_names(files: Sequence[str], test_dir: Path) -> list[str]:
    """The `file` column of submission.csv: each test image's file name, as Kaggle expects,
    also for the 2018 guide's `test/<dir>/*.png` layout. Two files with one name are an error."""
    seen: dict[str, str] = {}
    for relative in files:
        name = relative.rsplit("/", 1)[-1]
        if name in seen:
            raise DataError(
                f"two test images are named {name!r}: {test_dir / seen[name]} and "
                f"{test_dir / relative}; submission.csv names files, so rename or remove one"
            )
        seen[name] = relative
    return [relative.rsplit("/", 1)[-1] for relative in files]


def _hidden(name: str) -> bool:
    # Dot files are OS litter (.DS_Store) or our own partial downloads (.x.part).
    return name.startswith(".")


@dataclass(frozen=True)
class DataIdentity:
    """What the data IS, not where: a digest of every train/test file's relative path, size and
    checksum (the bucket's MD5, or the upload manifest's) or, for local files, modification time.

    Stored with a run, it tells a resumed or finished run whether its data changed since."""

    digest: str
    files: int
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"digest": self.digest, "files": self.files, "bytes": self.bytes}


def list_data(data: str) -> list[storage.ObjectInfo] | None:
    """Every object under a gs:// data prefix, listed once per run: it identifies the data
    (data_identity) and says what to mirror (fetch_data). None for a local folder."""
    return storage.list_objects(data) if storage.is_gcs(data) else None


def data_identity(data: str, listing: list[storage.ObjectInfo] | None = None) -> DataIdentity:
    """The identity of the data at `data` (a folder or a gs:// prefix), before anything is
    downloaded or decoded: a listing for gs:// (`listing`, or one made here), a walk that
    follows no folder link locally."""
    entries: list[tuple[str, int, str]] = []
    if storage.is_gcs(data):
        try:
            manifest = storage.read_json(storage.join(data, MANIFEST_NAME))
        except ValueError:  # unreadable: the listing's MD5s identify every ordinary object
            manifest = None
        listed = manifest.get("files") if isinstance(manifest, dict) else None
        uploaded = listed if isinstance(listed, dict) else {}
        for info in storage.list_objects(data) if listing is None else listing:
            split = info.name.split("/", 1)[0].lower()
            if split in SPLIT_DIRS and not _hidden(info.name.rsplit("/", 1)[-1]):
                entries.append((info.name, info.size, _object_checksum(info, uploaded)))
        if not entries:
            raise DataError(
                f"no train/ or test/ objects under {data}; upload the data first "
                "(kgg upload: train/<class>/*.png)"
            )
    else:
        root = Path(data)
        for split_dir in filter(None, find_split_dirs(root)):
            for relative in walk_files(split_dir, root)[0]:
                stat = (split_dir / relative).stat()
                name = f"{split_dir.name}/{relative}"
                entries.append((name, stat.st_size, str(stat.st_mtime_ns)))
    digest = hashlib.sha256()
    for name, size, checksum in sorted(entries):
        digest.update(f"{name}\t{size}\t{checksum}\n".encode())
    return DataIdentity(digest.hexdigest()[:16], len(entries), sum(e[1] for e in entries))


def _object_checksum(info: storage.ObjectInfo, uploaded: dict[str, Any]) -> str:
    """The object's MD5; composite objects have none: the manifest's MD5 of that name and size,
    else the object's update time (a rewrite changes it)."""
    if info.md5:
        return info.md5
    record = uploaded.get(info.name)
    if isinstance(record, dict) and record.get("size") == info.size and record.get("md5"):
        return str(record["md5"])
    return info.updated.isoformat() if info.updated else ""


def fetch_data(
    data: str,
    cache_dir: str | Path,
    workers: int = 8,
    progress: bool = True,
    listing: list[storage.ObjectInfo] | None = None,
) -> Path:
    """A local folder with the data: `data` itself, or a mirror of a gs:// prefix in the cache
    (from `listing`, the prefix's list_data, or one made here).

    Objects whose name starts with `_` at the data root (the upload manifest) are not copied;
    files already mirrored with the same size and MD5 are not copied again. The disk space of
    what is to be copied is checked first (DiskSpaceError, one line)."""
    if not storage.is_gcs(data):
        return Path(data)
    bucket, prefix = storage.split_gcs(data)
    local = Path(cache_dir, "data", bucket, *[p for p in prefix.split("/") if p])
    listing = storage.list_objects(data) if listing is None else listing
    mirrored = [info for info in listing if not info.name.split("/", 1)[0].startswith("_")]
    need = sum(info.size for info in mirrored if not _mirrored(local, info))
    diskspace.require(
        [diskspace.Need(local, need, f"the data's mirror ({len(mirrored)} files of {data})")]
    )
    stats = storage.download_tree(data, local, workers=workers, progress=progress,
                                  listing=mirrored)  # fmt: skip
    if stats.copied + stats.skipped == 0:
        raise DataError(f"no objects under {data}; check the prefix, or upload the data first")
    removed = _prune_mirror(listing, local)
    print(
        f"data: {stats.copied} files copied ({stats.bytes / 1e6:.1f} MB"
        + (f", {stats.rate()}" if stats.copied else "")
        + f"), {stats.skipped} cached"
        + (f", {removed} no longer in the bucket removed" if removed else "")
    )
    return local


def _mirrored(local: Path, info: storage.ObjectInfo) -> bool:
    """Whether the object is already there in full: its size (the copy itself checks the MD5)."""
    try:
        return (local / info.name).stat().st_size == info.size
    except (OSError, ValueError):
        return False


def _prune_mirror(listing: list[storage.ObjectInfo], local: Path) -> int:
    """Deletes mirrored files whose object is gone: the mirror must hold what the bucket holds,
    or a run would train on images deleted from the data (its identity comes from the bucket)."""
    remote = {info.name for info in listing}
    removed = 0
    for info in storage.list_objects(local):
        if info.name not in remote and not _hidden(info.name.rsplit("/", 1)[-1]):
            (local / info.name).unlink()
            removed += 1
    return removed
