"""`kgg upload`: a local train/<class> folder to gs://BUCKET/<prefix>, resumable.

Files whose object already exists with the same MD5 are skipped, so an interrupted upload is simply
run again. The manifest (`_upload_manifest.json`, docs/CONTRACTS.md, "Bucket layout") is written
only after every file is in the bucket: the VM's startup script takes it as "the data is complete".
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kgg.common import storage
from kgg.common.contract import MANIFEST_NAME
from kgg.common.errors import UserError
from kgg.common.terminal import printable

MANIFEST_VERSION = 1
DEFAULT_PREFIX = "data/plant-seedlings"
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
TRAIN_DIR = "train"
TEST_DIR = "test"


class LayoutError(UserError, ValueError):
    """The local folder is not in the train/<class>/*.png layout; the message says what is wrong."""


@dataclass(frozen=True)
class LocalFile:
    """One image to upload: its path on disk and its name under the bucket prefix."""

    path: Path
    relpath: str
    size: int


@dataclass
class Dataset:
    """A validated local dataset: images per class, test images, and files that are not uploaded."""

    root: Path
    classes: dict[str, list[LocalFile]]
    test: list[LocalFile]
    ignored: list[Path] = field(default_factory=list)
    # Symbolic links that lead outside the root: skipped, never uploaded.
    outside: list[Path] = field(default_factory=list)

    @property
    def files(self) -> list[LocalFile]:
        return [f for files in self.classes.values() for f in files] + self.test

    @property
    def class_counts(self) -> dict[str, int]:
        return {name: len(files) for name, files in self.classes.items()}


@dataclass
class UploadReport:
    """What an upload did, for the summary and the tests."""

    url: str
    class_counts: dict[str, int]
    test_count: int
    uploaded: int
    skipped: int
    bytes_uploaded: int
    manifest_written: bool
    ignored: int
    outside: int = 0
    extra: list[str] = field(default_factory=list)
    deleted: int = 0
    seconds: float = 0.0  # the uploads' wall time

    def rate(self) -> str:
        """`, in 12.3 s, 410 files/s` (empty when nothing was uploaded)."""
        if not self.uploaded:
            return ""
        return f", in {self.seconds:.1f} s, {self.uploaded / max(self.seconds, 1e-9):,.0f} files/s"


def _is_image(path: Path) -> bool:
    return (
        path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
    )


def _child_dir(root: Path, name: str) -> Path | None:
    """The sub-folder `name` of root, matched case-insensitively (Kaggle zips have had `Train/`)."""
    matches = sorted(p for p in root.iterdir() if p.is_dir() and p.name.lower() == name)
    if len(matches) > 1:
        found = ", ".join(p.name for p in matches)
        raise LayoutError(f"{root} has several {name!r} folders ({found}); keep exactly one")
    return matches[0] if matches else None


class _Root:
    """The dataset root, resolved once, and the links found leading out of it.

    A downloaded dataset archive can hold `train/a/x.png -> ~/.ssh/id_rsa`: following it would
    copy the laptop's file into the bucket. Links that stay inside the root are fine."""

    def __init__(self, root: Path) -> None:
        self.real = root.resolve()
        self.outside: list[Path] = []

    def leads_outside(self, path: Path) -> bool:
        if path.resolve().is_relative_to(self.real):
            return False
        self.outside.append(path)
        return True


def _train_path(class_name: str, image: Path) -> str:
    return f"{TRAIN_DIR}/{class_name}/{image.name}"


def _images(
    folder: Path, relpath_of: Callable[[Path], str], ignored: list[Path], root: _Root
) -> list[LocalFile]:
    files = []
    for path in sorted(folder.iterdir()):
        if root.leads_outside(path):
            continue
        if _is_image(path):
            files.append(LocalFile(path, relpath_of(path), path.stat().st_size))
        else:
            ignored.append(path)
    return files


def scan_dataset(local_dir: str | os.PathLike[str]) -> Dataset:
    """Checks the train/<class>/*.png layout (plus optional test/*.png) and lists the images.

    Object names are normalised to lower-case `train/` and `test/`, which is what the training job
    reads. Raises LayoutError naming the folder and what was expected."""
    root = Path(local_dir).expanduser()
    expected = (
        "expected LOCAL_DIR/train/<class>/*.png (one sub-folder per class) "
        "and optionally LOCAL_DIR/test/*.png"
    )
    if not root.is_dir():
        raise LayoutError(f"{root} is not a folder; {expected}")
    train = _child_dir(root, TRAIN_DIR)
    if train is None:
        subdirs = [p for p in root.iterdir() if p.is_dir()]
        if subdirs and all(any(_is_image(f) for f in d.iterdir()) for d in subdirs):
            raise LayoutError(
                f"{root} has no train/ folder but looks like one (its sub-folders hold images); "
                f"pass its parent folder instead. {expected}"
            )
        nested = sorted(d for d in subdirs if _child_dir(d, TRAIN_DIR) is not None)
        if nested:
            raise LayoutError(
                f"{root} has no train/ folder, but {nested[0]} has: pass that folder instead"
            )
        raise LayoutError(f"{root} has no train/ folder; {expected}")
    loose = sorted(p.name for p in train.iterdir() if _is_image(p))
    if loose:
        raise LayoutError(
            f"{train} holds images directly ({', '.join(loose[:3])}"
            f"{', ...' if len(loose) > 3 else ''}); "
            f"expected one sub-folder per class: {train}/<class>/*.png"
        )
    inside = _Root(root)
    test_dir = _child_dir(root, TEST_DIR)
    for folder in (train, test_dir):
        if folder is not None and inside.leads_outside(folder):
            raise LayoutError(
                f"{folder} is a symbolic link to {folder.resolve()}, outside {root}; "
                f"upload links only within the dataset folder: pass {folder.resolve().parent} "
                "or copy the files in"
            )
    ignored: list[Path] = []
    classes: dict[str, list[LocalFile]] = {}
    for class_dir in sorted(p for p in train.iterdir() if p.is_dir()):
        if class_dir.name.startswith(".") or inside.leads_outside(class_dir):
            continue
        files = _images(class_dir, functools.partial(_train_path, class_dir.name), ignored, inside)
        if not files:
            suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
            raise LayoutError(
                f"class folder {class_dir} has no images ({suffixes}); "
                "every class needs at least one"
            )
        classes[class_dir.name] = files
    if len(classes) < 2:
        found = ", ".join(classes) or "none"
        raise LayoutError(
            f"{train} has {len(classes)} class folder(s) ({found}); a classifier needs at least 2: "
            f"{train}/<class>/*.png"
        )
    test = (
        _images(test_dir, lambda p: f"{TEST_DIR}/{p.name}", ignored, inside)
        if test_dir is not None
        else []
    )
    return Dataset(root=root, classes=classes, test=test, ignored=ignored, outside=inside.outside)


def build_manifest(
    dataset: Dataset, md5s: dict[str, str], created: datetime | None = None
) -> dict[str, Any]:
    """The manifest document (docs/CONTRACTS.md, "Bucket layout") of a dataset whose files have
    `md5s`."""
    created = created or datetime.now(UTC)
    return {
        "version": MANIFEST_VERSION,
        "created": created.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "classes": dataset.class_counts,
        "test": len(dataset.test),
        "files": {
            f.relpath: {"size": f.size, "md5": md5s[f.relpath]}
            for f in sorted(dataset.files, key=lambda f: f.relpath)
        },
    }


def data_url(bucket: str, prefix: str) -> str:
    prefix = prefix.strip("/")
    return f"gs://{bucket}/{prefix}" if prefix else f"gs://{bucket}"


def _delete_object(url: str) -> None:
    """Removes one object if it is there: a stale manifest must not announce a half-done upload."""
    from google.api_core import exceptions as api

    bucket, key = storage.split_gcs(url)
    with contextlib.suppress(api.NotFound):
        storage.client().bucket(bucket).blob(key).delete()


def upload_dataset(
    local_dir: str | os.PathLike[str],
    bucket: str,
    prefix: str = DEFAULT_PREFIX,
    workers: int = 8,
    progress: bool = True,
    delete_extra: bool = False,
) -> UploadReport:
    """Validates the layout, uploads what is missing or changed in parallel, then the manifest.

    Objects under the prefix that are not in `local_dir` (a renamed class, an old dataset) would be
    trained on too: they are reported, and deleted when `delete_extra` is set."""
    dataset = scan_dataset(local_dir)
    base = data_url(bucket, prefix)
    manifest_url = f"{base}/{MANIFEST_NAME}"
    # One listing of the prefix: what is there already (50,000 objects: a hundred requests).
    remote = {info.name: info for info in storage.list_objects(base)}
    files = dataset.files
    md5s: dict[str, str] = {}
    uploaded: list[LocalFile] = []

    def same_in_bucket(local: LocalFile, md5: str) -> bool:
        existing = remote.get(local.relpath)
        return existing is not None and existing.size == local.size and existing.md5 == md5

    # Hash first (in parallel: hashlib releases the GIL) so we know whether anything changes before
    # touching the manifest.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for local, md5 in zip(
            files, pool.map(lambda f: storage.local_md5(f.path), files), strict=True
        ):
            md5s[local.relpath] = md5
    pending = [f for f in files if not same_in_bucket(f, md5s[f.relpath])]
    local_names = {f.relpath for f in files}
    extra = sorted(n for n in remote if n not in local_names and not n.startswith("_"))
    deleted = 0

    started = time.perf_counter()
    if pending or (extra and delete_extra):
        _delete_object(manifest_url)
        # google-cloud-storage's transfer_manager, `workers` files at a time.
        storage.upload_files([(f.path, f.relpath) for f in pending], base, workers, progress)
        uploaded = list(pending)
    seconds = time.perf_counter() - started
    if extra and delete_extra:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            list(pool.map(lambda name: _delete_object(f"{base}/{name}"), extra))
        deleted = len(extra)

    manifest = build_manifest(dataset, md5s)
    previous = storage.read_json(manifest_url)
    unchanged = (
        not pending
        and not deleted
        and isinstance(previous, dict)
        and {k: previous.get(k) for k in ("classes", "test", "files")}
        == {k: manifest[k] for k in ("classes", "test", "files")}
    )
    if not unchanged:
        storage.write_json(manifest_url, manifest)
    return UploadReport(
        url=base,
        class_counts=dataset.class_counts,
        test_count=len(dataset.test),
        uploaded=len(uploaded),
        skipped=len(files) - len(pending),
        bytes_uploaded=sum(f.size for f in uploaded),
        manifest_written=not unchanged,
        ignored=len(dataset.ignored),
        outside=len(dataset.outside),
        extra=extra,
        deleted=deleted,
        seconds=seconds,
    )


def format_report(report: UploadReport) -> str:
    """The summary printed after an upload: classes with counts, then what was copied."""
    width = max(len(name) for name in report.class_counts)
    total = sum(report.class_counts.values())
    lines = [f"{report.url}/train: {len(report.class_counts)} classes, {total} images"]
    lines += [f"  {name:<{width}}  {count:>6}" for name, count in report.class_counts.items()]
    lines.append(f"{report.url}/test: {report.test_count} images")
    if report.test_count == 0:
        lines.append("  (no test/ folder: the run will not write a Kaggle submission)")
    megabytes = report.bytes_uploaded / 1e6
    lines.append(
        f"uploaded {report.uploaded} files ({megabytes:.1f} MB{report.rate()}), "
        f"skipped {report.skipped} already in the bucket"
    )
    if report.ignored:
        lines.append(f"ignored {report.ignored} files that are not .png/.jpg/.jpeg images")
    if report.outside:
        lines.append(
            f"skipped {report.outside} symbolic links that lead outside the dataset folder "
            "(never uploaded)"
        )
    if report.deleted:
        lines.append(f"deleted {report.deleted} objects that are not in the local folder")
    elif report.extra:
        # Object names: the bucket's text.
        examples = printable(
            ", ".join(report.extra[:3]) + (", ..." if len(report.extra) > 3 else "")
        )
        lines.append(
            f"WARNING: {len(report.extra)} objects under {report.url} are not in the local folder "
            f"({examples}); the training job reads them too. Run again with --delete-extra to "
            "remove them."
        )
    manifest_state = "written" if report.manifest_written else "unchanged"
    lines.append(f"manifest {report.url}/{MANIFEST_NAME} {manifest_state}: the data is complete")
    return "\n".join(lines)
