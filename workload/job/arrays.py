"""Arrays larger than memory: .npy files written row by row and read through a memory map.

The decoded images and the block4 maps are N rows of 150 and 200 KB at full size: 7 GB and
15 GB for 47,500 images, more than the VM has. Neither is ever held by the process:
- written with pwrite at each row's offset (from several processes at once), never through a
  map: a full disk is then an OSError at the write, not the SIGBUS a write through a map gets,
  and no dirty mapped page counts against the process;
- read through a read-only memory map, where gathering a batch copies its rows out and releases
  the mapped pages it touched (madvise MADV_DONTNEED: the page cache keeps them, the process's
  page table drops them), so the resident set holds the batches in flight, not the file.
The files are ordinary .npy (`np.load(path, mmap_mode="r")` reads them too).
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PAGE = mmap.PAGESIZE


class ArrayFileError(ValueError):
    """A file is not a whole .npy of the expected shape (a kill or a full disk while writing)."""


def npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    """The .npy header (format 2.0, as numpy writes for any size) for a C-ordered array."""
    import io

    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
              "shape": tuple(shape)}  # fmt: skip
    buffer = io.BytesIO()
    np.lib.format.write_array_header_2_0(buffer, header)
    return buffer.getvalue()


def file_bytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    """The size of the .npy file holding an array of `shape` and `dtype`."""
    return len(npy_header(shape, dtype)) + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


@dataclass(frozen=True)
class RowTarget:
    """Where row `i` of a .npy being written goes: picklable, so that worker processes open the
    file themselves and write their rows in place."""

    path: str
    offset: int
    row_bytes: int

    def write(self, fd: int, row: int, values: np.ndarray) -> None:
        """Writes `values` (one row, or consecutive rows) at row `row` of the open file `fd`."""
        data = memoryview(np.ascontiguousarray(values).reshape(-1).view(np.uint8))
        if not data or len(data) % self.row_bytes:
            raise ValueError(f"{len(data)} bytes are no whole rows of {self.row_bytes}")
        position = self.offset + row * self.row_bytes
        while data:  # pwrite may write less than asked (a signal); never silently
            written = os.pwrite(fd, data, position)
            data, position = data[written:], position + written


def create(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> RowTarget:
    """Creates `path` as a .npy of `shape` (rows still zero) with every block reserved on disk
    (posix_fallocate): a disk too small fails here, with OSError ENOSPC, not half way."""
    header = npy_header(shape, dtype)
    total = file_bytes(shape, dtype)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, header)
        _reserve(fd, total)
    finally:
        os.close(fd)
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    return RowTarget(str(path), len(header), row_bytes)


def _reserve(fd: int, total: int) -> None:
    """Allocates the file's blocks; where the filesystem cannot (EOPNOTSUPP, EINVAL), it only
    gets its size, and a full disk shows at the write that does not fit."""
    try:
        os.posix_fallocate(fd, 0, total)
    except OSError as error:
        if error.errno not in (95, 22):  # EOPNOTSUPP, EINVAL
            raise
        os.ftruncate(fd, total)


class DiskRows:
    """Rows of a .npy on disk, or a subset of them, read through a read-only memory map.

    Behaves like the array where the job uses one: `len`, `shape`, `dtype`, `nbytes`; indexing
    with a slice is a view (no copy, as numpy's basic slicing), with an array of positions a
    gathered copy (as numpy's advanced indexing). Never materialised whole: np.asarray on it
    raises, so no code path copies the file into memory by accident."""

    def __init__(
        self, mapped: Any, array: np.ndarray, index: np.ndarray | None, path: Path, offset: int
    ) -> None:
        self._map = mapped  # None for a file of no rows
        self._array = array  # every row of the file, over the map
        self._index = index  # the file's rows in this selection; None: all of them
        self._offset = offset  # where row 0 starts in the file
        self._row_bytes = int(np.prod(array.shape[1:], dtype=np.int64)) * array.dtype.itemsize
        self.path = path

    @classmethod
    def open(cls, path: Path) -> DiskRows:
        """The rows of the .npy at `path`; ArrayFileError for a file that is not a whole .npy."""
        with open(path, "rb") as handle:
            try:
                shape, fortran, dtype = _read_header(handle)
            except (ValueError, SyntaxError, EOFError) as error:
                raise ArrayFileError(f"{path}: not a .npy file ({error})") from error
            offset = handle.tell()
            if fortran or dtype.hasobject or not shape:
                raise ArrayFileError(f"{path}: not a C-ordered array of rows")
            expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            size = os.fstat(handle.fileno()).st_size
            if size != expected:
                raise ArrayFileError(f"{path}: {size} bytes, a whole {shape} array has {expected}")
            if size == offset:  # no rows: nothing to map
                return cls(None, np.empty(shape, dtype), None, path, offset)
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        array = np.ndarray(shape, dtype, buffer=mapped, offset=offset)
        return cls(mapped, array, None, path, offset)

    # --- the array's face -----------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._index) if self._index is not None else len(self._array)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self._array.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self._array.dtype

    @property
    def ndim(self) -> int:
        return self._array.ndim

    @property
    def nbytes(self) -> int:
        return len(self) * self._row_bytes

    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise TypeError(
            f"{self.path}: {len(self)} rows on disk ({self.nbytes / 1e6:.0f} MB) are gathered by "
            "index (rows[positions]), never copied into memory whole"
        )

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, slice):
            return self.subset(np.arange(len(self))[key])
        positions = np.asarray(key)
        if positions.dtype.kind not in "iu":
            raise TypeError(f"rows are taken by integer positions or a slice, not {key!r}")
        return self.gather(positions)

    # --- rows -------------------------------------------------------------------------------

    def rows(self, positions: np.ndarray) -> np.ndarray:
        """The file's row numbers of `positions` in this selection."""
        return positions if self._index is None else self._index[positions]

    def subset(self, positions: np.ndarray) -> DiskRows:
        """The rows at `positions` of this selection, without reading them."""
        chosen = self.rows(np.asarray(positions, np.int64))
        return DiskRows(self._map, self._array, chosen, self.path, self._offset)

    def view(self, dtype: np.dtype) -> DiskRows:
        """The same rows read as another dtype of the same width (bfloat16 stored as uint16)."""
        if dtype.itemsize != self._array.dtype.itemsize:
            raise ValueError(f"{dtype} is not as wide as {self._array.dtype}")
        return DiskRows(self._map, self._array.view(dtype), self._index, self.path, self._offset)

    def gather(self, positions: np.ndarray) -> np.ndarray:
        """A copy of the rows at `positions`, in that order; the mapped pages it read are
        released from this process (they stay in the page cache)."""
        rows = self.rows(np.asarray(positions, np.int64))
        out = self._array[rows]
        self._release(rows)
        return out

    def _release(self, rows: np.ndarray) -> None:
        if self._map is None or not len(rows) or not hasattr(mmap, "MADV_DONTNEED"):
            return
        ordered = np.unique(rows)
        # Runs of consecutive rows: one madvise per run (a sequential pass is one call a batch).
        breaks = np.flatnonzero(np.diff(ordered) != 1) + 1
        for run in np.split(ordered, breaks):
            start = self._offset + int(run[0]) * self._row_bytes
            end = self._offset + (int(run[-1]) + 1) * self._row_bytes
            aligned = start - start % PAGE
            self._map.madvise(mmap.MADV_DONTNEED, aligned, end - aligned)


def _read_header(handle: Any) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(handle)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(handle)
    raise ValueError(f"npy format {version} is not one this job writes")


def rows_of(images: Any, start: int, stop: int) -> np.ndarray:
    """A copy of rows start..stop of an array or DiskRows (stop may pass the end)."""
    return images[np.arange(start, min(stop, len(images)))]
