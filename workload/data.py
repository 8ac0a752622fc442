"""The image folder: discovery, robust decoding, the resized-image cache, split and class weights.

Images are decoded and resized ONCE into a uint8 array cached on disk (keyed by the file list and
the image size), so no epoch and no rerun decodes a PNG again. TensorFlow is imported only inside
`make_dataset`, so everything else here is usable (and tested) without it.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workload import storage

CACHE_VERSION = 1


class DataError(ValueError):
    """The data folder cannot be trained on; the message names the path and what was expected."""


@dataclass
class Dataset:
    """Decoded images of one folder: `images[i]` is `files[i]` (relative), labelled `labels[i]`."""

    images: np.ndarray
    files: list[str]
    labels: np.ndarray
    skipped: list[dict[str, str]] = field(default_factory=list)


def find_split_dirs(root: Path) -> tuple[Path, Path | None]:
    """The train and (optional) test folders of a data root, matched case-insensitively.

    The 2018 guide's bucket used `Train/` and `Test/`; Kaggle's zip uses `train/` and `test/`."""
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist; expected train/<class>/*.png")
    subdirs = {p.name.lower(): p for p in sorted(root.iterdir()) if p.is_dir()}
    train = subdirs.get("train")
    if train is None:
        raise DataError(
            f"no train/ folder in {root} (found {sorted(subdirs) or 'nothing'}); "
            "expected train/<class>/*.png and optionally test/*.png"
        )
    return train, subdirs.get("test")


def discover_train(train_dir: Path) -> tuple[list[str], list[int], list[str], list[dict[str, str]]]:
    """Files (relative to train_dir), labels and class names from `train/<class>/*`.

    Files outside class folders are listed as skipped. Raises DataError for an empty class folder,
    fewer than two classes, or no files at all."""
    class_dirs = sorted(p for p in train_dir.iterdir() if p.is_dir() and not _hidden(p.name))
    skipped = [
        {"file": f"{train_dir.name}/{p.name}", "reason": "not inside a class folder"}
        for p in sorted(train_dir.iterdir())
        if p.is_file() and not _hidden(p.name)
    ]
    if len(class_dirs) < 2:
        raise DataError(
            f"{train_dir} has {len(class_dirs)} class folder(s) "
            f"({[p.name for p in class_dirs]}); need at least 2, as train/<class>/*.png"
        )
    files: list[str] = []
    labels: list[int] = []
    for index, class_dir in enumerate(class_dirs):
        members = sorted(p for p in class_dir.rglob("*") if p.is_file() and not _hidden(p.name))
        if not members:
            raise DataError(f"class folder {class_dir} is empty; remove it or add its images")
        files.extend(p.relative_to(train_dir).as_posix() for p in members)
        labels.extend([index] * len(members))
    return files, labels, [p.name for p in class_dirs], skipped


def discover_test(test_dir: Path) -> list[str]:
    """Test files (relative to test_dir), sorted, for submission.csv."""
    return sorted(
        p.relative_to(test_dir).as_posix()
        for p in test_dir.rglob("*")
        if p.is_file() and not _hidden(p.name)
    )


def _hidden(name: str) -> bool:
    # Dot files are OS litter (.DS_Store) or our own partial downloads (.x.part).
    return name.startswith(".")


def fetch_data(data: str, cache_dir: str | Path, workers: int = 8, progress: bool = True) -> Path:
    """A local folder with the data: `data` itself, or a mirror of a gs:// prefix in the cache.

    Objects whose name starts with `_` at the data root (the upload manifest) are not copied;
    files already mirrored with the same size and MD5 are not copied again."""
    if not storage.is_gcs(data):
        return Path(data)
    bucket, prefix = storage.split_gcs(data)
    local = Path(cache_dir, "data", bucket, *[p for p in prefix.split("/") if p])
    stats = storage.download_tree(
        data,
        local,
        workers=workers,
        progress=progress,
        include=lambda name: not name.split("/", 1)[0].startswith("_"),
    )
    if stats.copied + stats.skipped == 0:
        raise DataError(f"no objects under {data}; upload the data first (train/<class>/*.png)")
    print(f"data: {stats.copied} files copied ({stats.bytes / 1e6:.1f} MB), {stats.skipped} cached")
    return local


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


def load_images(
    root: Path,
    files: list[str],
    size: int,
    cache_dir: str | Path,
    workers: int | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, list[int], list[dict[str, str]]]:
    """Decoded images of `files` under `root`, with the indices that decoded and the skipped ones.

    The result is cached as .npy under cache_dir/images, keyed by the files' names, sizes and
    modification times and the image size: a rerun or a resumed run loads it in a second."""
    key = _cache_key(root, files, size)
    cache = Path(cache_dir, "images")
    array_path, meta_path = cache / f"{key}.npy", cache / f"{key}.json"
    if array_path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        return np.load(array_path), meta["ok"], meta["skipped"]

    def decode(name: str) -> np.ndarray | str:
        try:
            return decode_image(root / name, size)
        except Exception as error:  # any unreadable file is skipped and reported, never fatal
            return f"{type(error).__name__}: {error}"

    results: list[np.ndarray | str] = []
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 2) as pool:
        iterator = pool.map(decode, files)
        if progress:
            from tqdm import tqdm

            iterator = tqdm(iterator, total=len(files), desc=f"decode {root.name}", unit="img")
        results.extend(iterator)
    ok = [i for i, r in enumerate(results) if isinstance(r, np.ndarray)]
    skipped = [
        {"file": f"{root.name}/{files[i]}", "reason": str(r)}
        for i, r in enumerate(results)
        if isinstance(r, str)
    ]
    # Filled in place, each decoded image released once copied: np.stack would hold two copies
    # of the whole set (715 MB each at full size) at its peak.
    images = np.empty((len(ok), size, size, 3), np.uint8)
    for row, index in enumerate(ok):
        images[row] = results[index]
        results[index] = ""
    del results
    cache.mkdir(parents=True, exist_ok=True)
    tmp = array_path.with_name(f".{array_path.name}.tmp.npy")
    np.save(tmp, images)
    tmp.replace(array_path)
    meta_path.write_text(json.dumps({"ok": ok, "skipped": skipped}))
    return images, ok, skipped


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
    """The decoded test set (labels -1), or None when the data has no test/ folder."""
    _, test_dir = find_split_dirs(root)
    if test_dir is None:
        return None
    files = discover_test(test_dir)
    images, ok, bad = load_images(test_dir, files, size, cache_dir, progress=progress)
    return Dataset(images, [files[i] for i in ok], np.full(len(ok), -1, np.int64), bad)


def stratified_split(
    labels: np.ndarray, val_fraction: float, seed: int
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


def class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """'Balanced' weights n / (k * count): each class contributes equally to the loss.

    The real data has 221 to 654 images per class; unweighted, the big classes dominate."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = np.zeros(n_classes)
    present = counts > 0
    weights[present] = len(labels) / (present.sum() * counts[present])
    return weights


def make_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    batch_size: int,
    sample_weights: np.ndarray | None = None,
    shuffle: bool = False,
    augment: bool = False,
    seed: int = 0,
    views: int = 1,
) -> Any:
    """A tf.data pipeline of (float32 images in [0, 255], one-hot labels[, sample weights]).

    Rows are gathered from `images` by index, batch by batch: the array is never copied into the
    pipeline (from_tensor_slices would copy it, and a full shuffle buffer would hold another copy).
    `views` > 1: `images` holds `views` blocks of len(labels) rows (precomputed augmented views of
    the same samples, such as cached feature maps of flipped images), and each batch takes every
    sample from one view drawn at random per sample and per epoch.
    Augmentation (flips and 90-degree rotations: seedlings photographed from above have no up)
    runs on whole batches in a parallel map, only when asked (training batches)."""
    import tensorflow as tf

    n = len(labels)
    if len(images) != views * n:
        raise ValueError(f"{len(images)} rows for {views} view(s) of {n} samples")
    one_hot = np.eye(n_classes, dtype=np.float32)[labels]
    weights = None if sample_weights is None else sample_weights.astype(np.float32)
    row_shape = images.shape[1:]
    dtype = tf.as_dtype(images.dtype)

    def gather(rows: np.ndarray) -> tuple[np.ndarray, ...]:
        samples = rows % n
        parts = (images[rows], one_hot[samples])
        return parts if weights is None else (*parts, weights[samples])

    out_types = (dtype, tf.float32) if weights is None else (dtype, tf.float32, tf.float32)
    ds = tf.data.Dataset.range(n)
    if shuffle:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if views > 1:

        def pick_views(rows: Any) -> Any:
            drawn = tf.random.uniform(tf.shape(rows), 0, views, dtype=tf.int64, seed=seed)
            return rows + n * drawn

        ds = ds.map(pick_views)

    def prepare(rows: Any) -> tuple[Any, ...]:
        x, *rest = tf.numpy_function(gather, [rows], out_types, stateful=False)
        x = tf.cast(x, tf.float32)
        x.set_shape((None, *row_shape))
        rest[0].set_shape((None, n_classes))
        if weights is not None:
            rest[1].set_shape((None,))
        if augment:
            x = tf.image.random_flip_left_right(x)
            x = tf.image.random_flip_up_down(x)
            x = tf.image.rot90(x, k=tf.random.uniform([], 0, 4, dtype=tf.int32))
        return (x, *rest)

    return ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
