"""Robust image decoding and the resized-image cache.

Images are decoded and resized ONCE into a uint8 array cached on disk (keyed by the files' names,
sizes and modification times and the image size), so no epoch and no rerun decodes a PNG again;
it is read row by row when gathered (kgg.job.arrays), so memory does not grow with the data.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import warnings
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kgg.common import storage
from kgg.job import arrays, diskspace
from kgg.job.arrays import DiskRows
from kgg.job.atomic import atomic_path
from kgg.job.console import warn
from kgg.job.folders import DataError, discover_train, find_split_dirs, submission_names, walk_files

# 3: one row per file, readable or not, written in place and read by row (2: the
# readable images only, built in memory and loaded whole).
CACHE_VERSION = 3
# Files per decode task: few enough for a smooth progress bar, enough to amortise the hand-over.
DECODE_CHUNK = 16
# Below this many files a thread pool decodes sooner than processes start (see _decode_pool).
PROCESS_POOL_MIN_FILES = 256


@dataclass
class Dataset:
    """Decoded images of one folder: `images[i]` is `files[i]` (relative), labelled `labels[i]`.

    `images` are rows of the image cache on disk (arrays.DiskRows), never a copy in memory."""

    images: DiskRows
    files: list[str]
    labels: np.ndarray
    skipped: list[dict[str, str]] = field(default_factory=list)


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
