"""The block4-maps cache: the frozen trunk's output of every image, computed once per run.

With one block unfrozen, nothing below block5 ever changes: the fast recipe trains block5 + head
on these maps instead of rerunning the frozen forward pass every step. They are written as one
16-bit .npy per split into the run's local-only folder and read by row when gathered, so they
are never held in memory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from kgg.job import arrays, diskspace
from kgg.job.atomic import atomic_path
from kgg.job.console import keras_verbose, warn
from kgg.job.runstate import Run

# Block4 maps are predicted this many batches at a time: bounded float32 output per predict.
MAPS_CHUNK_BATCHES = 8
# Cached views of each training image for fine-tuning on block4 maps: as is, flipped left-right.
MAPS_VIEWS = 2
# What block4 maps are stored as outside mixed_bfloat16 (see maps_dtype).
MAPS_DTYPE = np.dtype(np.float16)


def pooled_features(
    extractor: Any, images: np.ndarray, batch_size: int, jit_compile: bool = False
) -> np.ndarray:
    """Pooled features of the frozen base, one forward pass (phase 1 trains on these).

    `images` may also be cached block4 maps, with `extractor` the last block + pooling."""
    from kgg.job import model as model_lib

    features = model_lib.predict(extractor, images, batch_size, keras_verbose(), jit_compile)
    return features.astype(np.float32)


def maps_dtype(policy: str) -> np.dtype:
    """What cached block4 maps are stored as: bfloat16 under mixed_bfloat16 (the trunk's own
    output; float16's range ends at 65504), else float16 (the trunk's output under
    mixed_float16; under float32 half the bytes of it, 1.5 GB less at full size, for rounding
    far below what the fine-tuned block5 resolves)."""
    if policy == "mixed_bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return MAPS_DTYPE


def maps_bytes(trunk: Any, rows: int, dtype: np.dtype) -> int:
    """The size of the cached maps file of `rows` maps of `trunk`'s output."""
    return arrays.file_bytes((rows, *trunk.output.shape[1:]), _stored(dtype))


def _stored(dtype: np.dtype) -> np.dtype:
    # bfloat16 is written as its uint16 bits, which numpy reads back without ml_dtypes.
    return np.dtype(np.uint16) if dtype.name == "bfloat16" else dtype


def write_frozen_maps(
    trunk: Any,
    images: Any,
    batch_size: int,
    path: Path,
    views: int = 1,
    dtype: np.dtype = MAPS_DTYPE,
    jit_compile: bool = False,
) -> None:
    """Writes the frozen trunk's maps of `images` (view 1: as they are, view 2: flipped left to
    right) to `path` as one 16-bit .npy (`dtype`, see maps_dtype), chunk by chunk into a file
    whose blocks are reserved first (a disk too small fails before the first forward pass, with
    OSError ENOSPC): at full size the float32 output of one predict over the training set would
    be 1.5 GB, the 16-bit file is half that per view, and neither is ever held in memory."""
    from kgg.job import model as model_lib

    stored = _stored(dtype)
    shape = (views * len(images), *trunk.output.shape[1:])
    chunk = MAPS_CHUNK_BATCHES * batch_size
    with atomic_path(path) as tmp:
        target = arrays.create(tmp, shape, stored)
        fd = os.open(tmp, os.O_WRONLY)
        try:
            for view in range(views):
                for start in range(0, len(images), chunk):
                    part = arrays.rows_of(images, start, start + chunk)
                    if view == 1:
                        part = part[:, :, ::-1]
                    out = model_lib.predict(trunk, part, batch_size, jit_compile=jit_compile)
                    target.write(fd, view * len(images) + start, out.astype(dtype).view(stored))
        finally:
            os.close(fd)


def read_cached_maps(path: Path, rows: int, dtype: np.dtype) -> Any:
    """The maps cached at `path` as `dtype`, read when gathered (arrays.DiskRows), when
    they are whole and have `rows` rows; else an empty array (a missing file, or one a kill or
    full disk left unreadable: deleted, computed again)."""
    if not path.is_file():
        return np.empty(0)
    try:
        maps = arrays.DiskRows.open(path)
        if len(maps) != rows or maps.dtype.itemsize != dtype.itemsize:
            raise ValueError(f"{len(maps)} rows of {maps.dtype}, expected {rows} of {dtype}")
        return maps.view(dtype)
    except (OSError, ValueError) as error:  # ArrayFileError: a ValueError
        warn(f"cached maps {path} are unreadable ({error}); deleted, computing again")
        path.unlink(missing_ok=True)
        return np.empty(0)


class MapsCache:
    """The block4 maps of one run's training images (`views` of each) and validation images.

    They live in the run's local-only work folder, which only ever holds one run, named by the
    precision policy they were made at."""

    def __init__(
        self,
        run: Run,
        trunk: Any,
        x_train: Any,
        x_val: Any,
        views: int,
        batch_size: int,
        policy: str,
        jit_compile: bool,
    ) -> None:
        self.run = run
        self.trunk = trunk
        self.wanted = (("train", x_train, views), ("val", x_val, 1))
        self.batch_size = batch_size
        self.policy = policy
        self.dtype = maps_dtype(policy)
        self.jit_compile = jit_compile
        self._maps: dict[str, Any] = {}

    def load(self) -> tuple[Any, Any]:
        """The training and validation maps, read by row; recomputed when missing (a resumed
        run on a fresh machine), unreadable, or made at another precision. The disk space of
        those still to make is checked first, for both at once."""
        maps = self._maps
        if maps:
            return maps["train"], maps["val"]
        missing = []
        for name, images, n_views in self.wanted:
            path = self.run.local_only / f"maps.{name}.{self.policy}.npy"
            maps[name] = read_cached_maps(path, len(images) * n_views, self.dtype)
            if not len(maps[name]):
                for other in self.run.local_only.glob(f"maps.{name}.*.npy"):
                    other.unlink()  # made at another precision: never used, 1 GB+ of disk
                missing.append((name, images, n_views, path))
        needs = [
            diskspace.Need(
                self.run.local_only, maps_bytes(self.trunk, len(images) * n_views, self.dtype),
                f"the block4 maps of {len(images)} {name} images x {n_views}",
                self.run.work_option,
            )
            for name, images, n_views, _ in missing
        ]  # fmt: skip
        diskspace.require(needs)
        for (name, images, n_views, path), need in zip(missing, needs, strict=True):
            print(f"features: block4 maps of {len(images)} {name} images x {n_views}")
            try:
                write_frozen_maps(self.trunk, images, self.batch_size, path, n_views, self.dtype,
                                  self.jit_compile)  # fmt: skip
            except OSError as error:
                if diskspace.is_full(error):
                    raise diskspace.full(need, error) from error
                raise
            maps[name] = read_cached_maps(path, len(images) * n_views, self.dtype)
        return maps["train"], maps["val"]

    def release(self) -> None:
        """Lets go of the open maps files."""
        self._maps.clear()
