"""The image folder: discovery, robust decoding, the resized-image cache, split and class weights.

Images are decoded and resized ONCE into a uint8 array cached on disk (keyed by the files' names,
sizes and modification times and the image size), so no epoch and no rerun decodes a PNG again;
it is read row by row when gathered (kgg.job.arrays), so memory does not grow with the data.
The data's identity (`data_identity`) is its content, so a run and its caches notice when the
data under the same path changed. TensorFlow is imported only inside the dataset builders, so
everything else here is usable (and tested) without it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import os
import signal
import sys
import warnings
import weakref
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kgg.common import storage
from kgg.common.contract import MANIFEST_NAME
from kgg.job import arrays, diskspace
from kgg.job.arrays import DiskRows
from kgg.job.atomic import atomic_path

# 3: one row per file, readable or not, written in place and read by row (2: the
# readable images only, built in memory and loaded whole).
CACHE_VERSION = 3
# Files per decode task: few enough for a smooth progress bar, enough to amortise the hand-over.
DECODE_CHUNK = 16
# Below this many files a thread pool decodes sooner than processes start (see _decode_pool).
PROCESS_POOL_MIN_FILES = 256
SPLIT_DIRS = ("train", "test")
# Below this many images a class gets one validation or held-out image, or none: its scores mean
# little, and the user should know before reading them.
FEW_IMAGES = 5
# Second seed component of the held-out split: a stream apart from the validation split's.
HOLDOUT_STREAM = 1


class DataError(ValueError):
    """The data folder cannot be trained on; the message names the path and what was expected."""


@dataclass
class Dataset:
    """Decoded images of one folder: `images[i]` is `files[i]` (relative), labelled `labels[i]`.

    `images` are rows of the image cache on disk (arrays.DiskRows), never a copy in memory."""

    images: DiskRows
    files: list[str]
    labels: np.ndarray
    skipped: list[dict[str, str]] = field(default_factory=list)


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


def decode_image(path: str | Path, size: int) -> np.ndarray:
    """Decodes any image Pillow reads to (size, size, 3) uint8 RGB.

    Alpha is dropped, grayscale is repeated, 16-bit is scaled to 8-bit, palettes are expanded.
    Raises on files that are not readable images."""
    from PIL import Image

    with warnings.catch_warnings():
        # Huge images are real (3000+ px seedlings); only absurd ones are refused by Pillow.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            if image.format == "JPEG":
                image.draft("RGB", (size, size))  # decode JPEGs at a reduced scale: much faster
            image.load()
            rgb = _to_rgb(image)
    resized = rgb.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    array = np.asarray(resized, dtype=np.uint8)
    if array.shape != (size, size, 3):
        raise ValueError(f"decoded to shape {array.shape}, expected ({size}, {size}, 3)")
    return array


def _to_rgb(image: Any) -> Any:
    from PIL import Image

    if image.mode in {"I;16", "I;16B", "I;16L", "I", "F"}:
        values = np.asarray(image, dtype=np.float64)
        high = values.max() if values.size else 0.0
        scale = 255.0 / (65535.0 if high > 255 else 255.0)
        gray = np.clip(values * scale, 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA")
    return image.convert("RGB")


def _cache_key(root: Path, files: list[str], size: int) -> str:
    digest = hashlib.sha256(f"v{CACHE_VERSION}:{size}:{root.resolve()}".encode())
    for name in files:
        stat = (root / name).stat()
        digest.update(f"\n{name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:24]


def warn(message: str) -> None:
    """One line on stderr, where the VM's journal and a terminal both show it."""
    print(f"warning: {message}", file=sys.stderr)


def image_cache_shape(files: int, size: int) -> tuple[int, int, int, int]:
    """The decoded-image cache of `files` files: one uint8 RGB row per file, readable or not."""
    return (files, size, size, 3)


def _read_image_cache(
    array_path: Path, meta_path: Path, files: list[str], size: int
) -> tuple[DiskRows, list[int], list[dict[str, str]]] | None:
    """The cached decode of `files`, or None when there is none; a cache that cannot be read or
    does not match (a kill while writing it, a full disk) is named, deleted and rebuilt."""
    if not (array_path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        ok, skipped = meta["ok"], meta["skipped"]
        if meta.get("version") != CACHE_VERSION or meta.get("files") != len(files):
            raise ValueError(f"made for {meta.get('files')} files by cache version "
                             f"{meta.get('version')}")  # fmt: skip
        images = DiskRows.open(array_path)
        if images.shape != image_cache_shape(len(files), size) or images.dtype != np.uint8:
            raise ValueError(f"{images.shape} {images.dtype} rows for {len(files)} files")
    except (OSError, ValueError, KeyError, TypeError) as error:  # ArrayFileError: a ValueError
        warn(f"image cache {meta_path} is unreadable ({type(error).__name__}: {error}); "
             "deleted, decoding again")  # fmt: skip
        array_path.unlink(missing_ok=True)
        meta_path.unlink(missing_ok=True)
        return None
    return images.subset(np.asarray(ok, np.int64)), ok, skipped


def _remove_old_caches(cache: Path) -> None:
    """Deletes the caches of earlier cache versions (another key, never read again: 715 MB each
    at full size); a cache of another image size or folder of this version stays."""
    for meta_path in cache.glob("*.json"):
        try:
            version = json.loads(meta_path.read_text()).get("version")
        except (OSError, ValueError, AttributeError):
            version = None
        if version != CACHE_VERSION:
            meta_path.with_suffix(".npy").unlink(missing_ok=True)
            meta_path.unlink(missing_ok=True)


def decode_workers() -> int:
    """Every core this process may run on (its affinity: a container's or taskset's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 2


def _decode_rows(
    target: arrays.RowTarget, root: str, size: int, chunk: list[tuple[int, str]]
) -> list[str | None]:
    """Decodes a chunk of files straight into their rows of the cache being written; returns,
    per file, None or why it is unreadable. A failing write (a full disk) raises."""
    fd = os.open(target.path, os.O_WRONLY)
    try:
        reasons: list[str | None] = []
        for row, name in chunk:
            try:
                pixels = decode_image(Path(root, name), size)
            except Exception as error:  # any unreadable file is skipped and reported, never fatal
                reasons.append(f"{type(error).__name__}: {error}")
                continue
            target.write(fd, row, pixels)
            reasons.append(None)
        return reasons
    finally:
        os.close(fd)


def _quiet_worker() -> None:
    """A decode process leaves Ctrl-C and SIGTERM (the VM stopping) to the job, which stops it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _decode_pool(workers: int, files: int) -> Executor:
    """Processes, one per core: Pillow's decoders and resize release the GIL for most of a
    decode but not all (threads kept 1.92 of 2 cores busy: ~4% of the work is serialised, which
    costs more with every core; on 2 cores processes decoded 280-320 img/s, threads 268-285).
    Threads for a few files, which a process pool would spend longer starting (about half a
    second) than decoding. The processes come from a fork server, never a fork of this process:
    the job may hold threads (TensorFlow's, a notebook's) whose locks a fork would copy held."""
    if files < PROCESS_POOL_MIN_FILES or workers == 1:
        return ThreadPoolExecutor(max_workers=workers)
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    return ProcessPoolExecutor(workers, mp_context=context, initializer=_quiet_worker)


def _decode_into(
    target: arrays.RowTarget,
    root: Path,
    files: list[str],
    size: int,
    workers: int,
    progress: bool,
) -> list[str | None]:
    """Every file decoded into its row of `target`, chunk by chunk on every core; per file None
    (decoded) or why not."""
    reasons: list[str | None] = [None] * len(files)
    indexed = list(enumerate(files))
    pending = [
        indexed[start : start + DECODE_CHUNK] for start in range(0, len(files), DECODE_CHUNK)
    ]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(files), desc=f"decode {root.name}", unit="img")
    try:
        pending = _decode_chunks(_decode_pool(workers, len(files)), target, root, size, pending,
                                 reasons, bar)  # fmt: skip
        if pending:  # the processes could not run: the rest in threads, as fast nearly
            _decode_chunks(ThreadPoolExecutor(workers), target, root, size, pending, reasons, bar)
    finally:
        if bar is not None:
            bar.close()
    return reasons


def _decode_chunks(
    pool: Executor,
    target: arrays.RowTarget,
    root: Path,
    size: int,
    chunks: list[list[tuple[int, str]]],
    reasons: list[str | None],
    bar: Any,
) -> list[list[tuple[int, str]]]:
    """Decodes `chunks` in `pool`, filling `reasons`; returns the chunks left undone when the
    pool's processes could not start or died (a script without a `__main__` guard, which the
    fork server's workers import, or a worker killed), after one warning line."""
    futures = {pool.submit(_decode_rows, target, str(root), size, chunk): chunk for chunk in chunks}
    done: set[int] = set()
    try:
        for future in as_completed(futures):
            for (row, _), reason in zip(futures[future], future.result(), strict=True):
                reasons[row] = reason
            done.add(id(futures[future]))
            if bar is not None:
                bar.update(len(futures[future]))
    except BrokenProcessPool as error:
        pool.shutdown(wait=False, cancel_futures=True)
        warn(f"the decode processes stopped ({error}); decoding the rest in threads")
        return [chunk for chunk in chunks if id(chunk) not in done]
    except BaseException:
        # A full disk, Ctrl-C or SIGTERM: the chunks not started are dropped, not decoded.
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return []


def load_images(
    root: Path,
    files: list[str],
    size: int,
    cache_dir: str | Path,
    workers: int | None = None,
    progress: bool = True,
) -> tuple[DiskRows, list[int], list[dict[str, str]]]:
    """Decoded images of `files` under `root`, with the indices that decoded and the skipped ones.

    The result is the `ok` rows of a .npy under cache_dir/images, read when gathered (it is
    never held in memory), keyed by the files' names, sizes and modification times and the
    image size: a rerun or a resumed run opens it in milliseconds. Decoding writes each image
    into its row as it is decoded, on every core; the disk space is checked and reserved first
    (DiskSpaceError, one line)."""
    key = _cache_key(root, files, size)
    cache = Path(cache_dir, "images")
    array_path, meta_path = cache / f"{key}.npy", cache / f"{key}.json"
    cached = _read_image_cache(array_path, meta_path, files, size)
    if cached is not None:
        return cached
    cache.mkdir(parents=True, exist_ok=True)
    _remove_old_caches(cache)
    shape = image_cache_shape(len(files), size)
    need = diskspace.Need(
        cache, arrays.file_bytes(shape, np.dtype(np.uint8)),
        f"the decoded images of {root.name}/ ({len(files)} at {size} px)",
    )  # fmt: skip
    diskspace.require([need])
    # The array first, the meta last (both atomic): a kill in between leaves no meta, a rebuild.
    try:
        with atomic_path(array_path) as tmp:
            target = arrays.create(tmp, shape, np.dtype(np.uint8))
            workers = workers or decode_workers()
            reasons = _decode_into(target, root, files, size, workers, progress)
    except OSError as error:
        if diskspace.is_full(error):
            raise diskspace.full(need, error) from error
        raise
    ok = [i for i, reason in enumerate(reasons) if reason is None]
    skipped = [
        {"file": f"{root.name}/{files[i]}", "reason": reason}
        for i, reason in enumerate(reasons)
        if reason is not None
    ]
    meta = {"version": CACHE_VERSION, "files": len(files), "size": size, "ok": ok,
            "skipped": skipped}  # fmt: skip
    storage.write_bytes(meta_path, json.dumps(meta).encode())
    return DiskRows.open(array_path).subset(np.asarray(ok, np.int64)), ok, skipped


def load_train(
    root: Path, size: int, cache_dir: str | Path, progress: bool = True
) -> tuple[Dataset, list[str]]:
    """The decoded training set and its class names; raises DataError when nothing is usable."""
    train_dir, _ = find_split_dirs(root)
    files, labels, class_names, skipped = discover_train(train_dir)
    images, ok, bad = load_images(train_dir, files, size, cache_dir, progress=progress)
    if not ok:
        raise DataError(f"none of the {len(files)} files under {train_dir} is a readable image")
    kept = np.asarray(labels, dtype=np.int64)[ok]
    for index, name in enumerate(class_names):
        if not np.any(kept == index):
            raise DataError(f"class folder {train_dir / name} has no readable image")
    return Dataset(images, [files[i] for i in ok], kept, skipped + bad), class_names


def load_test(
    root: Path, size: int, cache_dir: str | Path, progress: bool = True
) -> Dataset | None:
    """The decoded test set (labels -1), or None when the data has no test/ folder.

    Its `files` are the submission's names (see submission_names); duplicates raise DataError
    before anything is decoded."""
    _, test_dir = find_split_dirs(root)
    if test_dir is None:
        return None
    files, not_followed = walk_files(test_dir, test_dir.parent)
    names = submission_names(files, test_dir)
    images, ok, bad = load_images(test_dir, files, size, cache_dir, progress=progress)
    return Dataset(
        images, [names[i] for i in ok], np.full(len(ok), -1, np.int64), not_followed + bad
    )


def few_image_warnings(labels: np.ndarray, class_names: list[str]) -> list[str]:
    """One line per class with fewer than FEW_IMAGES readable images."""
    counts = np.bincount(labels, minlength=len(class_names))
    return [
        f"class {name!r} has {count} image(s), fewer than {FEW_IMAGES}: its validation and "
        "held-out scores rest on one image or none; add images to score it"
        for name, count in zip(class_names, counts, strict=True)
        if count < FEW_IMAGES
    ]


def stratified_split(
    labels: np.ndarray, val_fraction: float, seed: int | Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation indices with each class split in the same proportion, reproducibly.

    Every class with at least two images keeps at least one in each part."""
    rng = np.random.default_rng(seed)
    train: list[np.ndarray] = []
    val: list[np.ndarray] = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_val = round(len(members) * val_fraction)
        if len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        val.append(members[:n_val])
        train.append(members[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def three_way_split(
    labels: np.ndarray, val_fraction: float, holdout_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train, validation and held-out indices, each stratified by class.

    The held-out part is drawn first, from its own random stream; validation then takes
    `val_fraction` of all images from the rest. With no held-out part, the validation split is
    the same as stratified_split's."""
    everything = np.arange(len(labels))
    if holdout_fraction > 0:
        rest, holdout = stratified_split(labels, holdout_fraction, (seed, HOLDOUT_STREAM))
    else:
        rest, holdout = everything, everything[:0]
    train, val = stratified_split(labels[rest], val_fraction / (1 - holdout_fraction), seed)
    return rest[train], rest[val], holdout


def class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """'Balanced' weights n / (k * count): each class contributes equally to the loss.

    The real data has 221 to 654 images per class; unweighted, the big classes dominate."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = np.zeros(n_classes)
    present = counts > 0
    weights[present] = len(labels) / (present.sum() * counts[present])
    return weights


@functools.lru_cache(maxsize=4)
def epoch_rows(n: int, views: int, seed: tuple[int, ...], epoch: int) -> np.ndarray:
    """The rows of one training epoch: every sample once, in an order and from a view drawn from
    (seed, epoch) alone, so a resumed run draws exactly what an uninterrupted one would have.

    With `views` > 1, row v * n + i is view v of sample i (see training_dataset)."""
    rng = np.random.default_rng([*seed, epoch])
    order = rng.permutation(n)
    return order + n * rng.integers(0, views, n) if views > 1 else order


def augment_batch(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random left-right and up-down flips per image, one random quarter turn per batch (square
    images): seedlings photographed from above have no up."""
    out = images.copy()
    for axis in (2, 1):  # width, height
        flipped = rng.random(len(out)) < 0.5
        out[flipped] = np.flip(out[flipped], axis=axis)
    return np.ascontiguousarray(np.rot90(out, int(rng.integers(4)), axes=(1, 2)))


def make_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    batch_size: int,
    sample_weights: np.ndarray | None = None,
) -> Any:
    """(float32 images in [0, 255], one-hot labels[, sample weights]) batches in row order, once:
    for evaluation and the features pass."""
    return _pipeline(images, labels, n_classes, batch_size, sample_weights, None, range(1))


def prediction_batches(images: np.ndarray, batch_size: int) -> Any:
    """float32 batches of `images` in row order for Model.predict, each exactly `batch_size`
    rows: the last is padded with copies of its final row (model_lib.predict drops their
    predictions). One batch shape, one trace of a model's predict function (and one XLA
    compilation): a shorter last batch, or labels of another shape, would trace it again."""
    labels = np.zeros(len(images), np.int64)
    dataset = _pipeline(images, labels, 1, batch_size, None, None, range(1), pad=True)
    return dataset.map(lambda x, y: x)


def training_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    batch_size: int,
    sample_weights: np.ndarray | None,
    seed: tuple[int, ...],
    epochs: range,
    views: int = 1,
    augment: bool = False,
) -> tuple[Any, int]:
    """The training batches of `epochs` (e.g. range(resumed_at, 10)) and the steps per epoch,
    for fit(steps_per_epoch=...): one dataset across epochs, each epoch's order, views and
    augmentation drawn from (seed, epoch) alone (epoch_rows), never from a generator's history.

    `views` > 1: `images` holds `views` blocks of len(labels) rows (precomputed augmented views of
    the same samples, such as cached feature maps of flipped images), and each epoch takes every
    sample from one view drawn at random. `augment` flips and turns image batches (augment_batch).
    """
    dataset = _pipeline(
        images, labels, n_classes, batch_size, sample_weights, seed, epochs, views, augment
    )
    return dataset, -(-len(labels) // batch_size)


def _pipeline(
    images: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    batch_size: int,
    sample_weights: np.ndarray | None,
    seed: tuple[int, ...] | None,
    epochs: range,
    views: int = 1,
    augment: bool = False,
    pad: bool = False,
) -> Any:
    """A tf.data pipeline over (epoch, step) pairs that gathers each batch's rows from `images`.

    Rows are gathered by index, batch by batch: the array is never copied into the pipeline
    (from_tensor_slices would copy it, and a shuffle buffer would hold another copy). `pad`
    fills the last batch up to `batch_size` rows with copies of its final row."""
    import tensorflow as tf

    n = len(labels)
    if len(images) != views * n:
        raise ValueError(f"{len(images)} rows for {views} view(s) of {n} samples")
    weights = None if sample_weights is None else sample_weights.astype(np.float32)
    source = _Source(images, np.eye(n_classes, dtype=np.float32)[labels], weights)
    steps = -(-n // batch_size)

    def gather(epoch: np.int64, step: np.int64) -> tuple[np.ndarray, ...]:
        rows_of, one_hot, weights = source.arrays()
        order = np.arange(n) if seed is None else epoch_rows(n, views, seed, int(epoch))
        rows = order[step * batch_size : (step + 1) * batch_size]
        if pad:
            rows = np.concatenate([rows, np.full(batch_size - len(rows), rows[-1])])
        x = rows_of[rows]
        if augment and seed is not None:
            x = augment_batch(x, np.random.default_rng([*seed, int(epoch), int(step)]))
        samples = rows % n
        parts = (x, one_hot[samples])
        return parts if weights is None else (*parts, weights[samples])

    dtype = tf.as_dtype(images.dtype)
    out_types = (dtype, tf.float32) if weights is None else (dtype, tf.float32, tf.float32)

    def prepare(epoch: Any, step: Any) -> tuple[Any, ...]:
        x, *rest = tf.numpy_function(gather, [epoch, step], out_types, stateful=False)
        x = tf.cast(x, tf.float32)
        rows = batch_size if pad else None
        x.set_shape((rows, *images.shape[1:]))
        rest[0].set_shape((rows, n_classes))
        if weights is not None:
            rest[1].set_shape((rows,))
        return (x, *rest)

    plan = (np.repeat(np.asarray(epochs, np.int64), steps), np.tile(np.arange(steps), len(epochs)))
    ds = tf.data.Dataset.from_tensor_slices(plan)
    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    weakref.finalize(ds, source.release)
    return ds


class _Source:
    """What a pipeline's gather reads, until its dataset is gone.

    TensorFlow keeps the Python function of every tf.numpy_function alive as long as the
    outermost graph, which for a tf.data pipeline built eagerly is the process's own: a gather
    that held its arrays itself would keep them to the end, 38 MB for each chunk of images
    predicted (measured: 1.3 GB for the block4 maps of 2,310 images). It holds this instead,
    which the dataset's finalizer empties."""

    def __init__(self, images: Any, one_hot: np.ndarray, weights: np.ndarray | None) -> None:
        self._arrays: tuple[Any, np.ndarray, np.ndarray | None] | None = (images, one_hot, weights)

    def arrays(self) -> tuple[Any, np.ndarray, np.ndarray | None]:
        if self._arrays is None:
            raise RuntimeError("a batch was asked of a pipeline whose dataset is gone")
        return self._arrays

    def release(self) -> None:
        self._arrays = None
