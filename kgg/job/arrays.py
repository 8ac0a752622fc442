"""Arrays larger than memory: .npy files written row by row and read row by row.

The decoded images and the block4 maps are N rows of 150 and 200 KB at full size: 8 GB and
15 GB for 47,500 images, more than the VM has. Neither is ever held by the process:
- written with pwrite at each row's offset (from several processes at once), never through a
  memory map: a full disk is then an OSError at the write, not the SIGBUS a write through a map
  gets, and no dirty mapped page counts against the process;
- read with pread, batch by batch, into the batch's own array: the page cache holds what is hot
  and the process maps nothing. Gathering through a memory map (np.load(mmap_mode="r")) reads as
  fast but leaves every page it touched resident in the process (RSS and address space grow to
  the file's size: the OOM killer counts them) unless each gather releases them, which costs a
  third of the speed (measured on 150 KB rows: pread 25,900 rows/s, a map 25,800, a map
  released after each gather 18,700, all from the page cache).
The files are ordinary .npy: `np.load(path, mmap_mode="r")` reads them too.
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


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
        data = np.ascontiguousarray(values).reshape(-1).view(np.uint8).data
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
    """Rows of a .npy on disk, or a subset of them, read when gathered.

    Behaves like the array where the job uses one: `len`, `shape`, `dtype`, `nbytes`; indexing
    with a slice is a view (nothing read, as numpy's basic slicing), with an array of positions
    a gathered copy (as numpy's advanced indexing). Never materialised whole: np.asarray on it
    raises, so no code path copies the file into memory by accident. Thread-safe (tf.data
    gathers batches in parallel): every read is positioned."""

    def __init__(
        self,
        fd: int,
        shape: tuple[int, ...],
        dtype: np.dtype,
        offset: int,
        index: np.ndarray | None,
        path: Path,
    ) -> None:
        self._fd = fd  # shared by every selection of the file; closed with the last of them
        self._shape = shape  # the file's: every row
        self._dtype = dtype
        self._offset = offset  # where row 0 starts in the file
        self._index = index  # the file's rows in this selection; None: all of them
        self._row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        self.path = path
        # The selection this one was made from: keeps the file (and its finalizer) open.
        self._owner: DiskRows | None = None

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
        fd = os.open(path, os.O_RDONLY)
        rows = cls(fd, tuple(shape), dtype, offset, None, Path(path))
        weakref.finalize(rows, os.close, fd)
        return rows

    # --- the array's face -----------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._index) if self._index is not None else self._shape[0]

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self._shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def ndim(self) -> int:
        return len(self._shape)

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
        if isinstance(key, int | np.integer):
            return self.gather(np.array([key]))[0]
        positions = np.asarray(key)
        if positions.dtype.kind not in "iu":
            raise TypeError(f"rows are taken by integer positions or a slice, not {key!r}")
        return self.gather(positions)

    # --- rows -------------------------------------------------------------------------------

    def rows(self, positions: np.ndarray) -> np.ndarray:
        """The file's row numbers of `positions` in this selection (negative ones count from
        its end, as numpy's); IndexError for one outside it."""
        positions = np.where(positions < 0, positions + len(self), positions)
        if len(positions) and (positions.min() < 0 or positions.max() >= len(self)):
            raise IndexError(f"positions {positions.min()}..{positions.max()} of {len(self)} rows")
        return positions if self._index is None else self._index[positions]

    def _like(self, dtype: np.dtype, index: np.ndarray | None) -> DiskRows:
        rows = DiskRows(self._fd, self._shape, dtype, self._offset, index, self.path)
        rows._owner = self
        return rows

    def subset(self, positions: np.ndarray) -> DiskRows:
        """The rows at `positions` of this selection, without reading them."""
        return self._like(self._dtype, self.rows(np.asarray(positions, np.int64)))

    def view(self, dtype: np.dtype) -> DiskRows:
        """The same rows read as another dtype of the same width (bfloat16 stored as uint16)."""
        if dtype.itemsize != self._dtype.itemsize:
            raise ValueError(f"{dtype} is not as wide as {self._dtype}")
        return self._like(dtype, self._index)

    def gather(self, positions: np.ndarray) -> np.ndarray:
        """A copy of the rows at `positions`, in that order: one positioned read per run of
        consecutive rows (a sequential pass reads a batch in one call)."""
        rows = self.rows(np.asarray(positions, np.int64).reshape(-1))
        out = np.empty((len(rows), *self._shape[1:]), self._dtype)
        if not len(rows):
            return out
        buffer = out.reshape(-1).view(np.uint8).data
        starts = np.flatnonzero(np.diff(rows, prepend=rows[0] - 2) != 1)
        for first, stop in zip(starts, [*starts[1:], len(rows)], strict=True):
            part = buffer[first * self._row_bytes : stop * self._row_bytes]
            self._read_into(part, self._offset + int(rows[first]) * self._row_bytes)
        return out

    def _read_into(self, part: memoryview, position: int) -> None:
        while part:  # a read may return less than asked (a signal); never silently
            count = os.preadv(self._fd, [part], position)
            if count == 0:
                raise ArrayFileError(f"{self.path} ended at byte {position}: it was cut short")
            part, position = part[count:], position + count


def _read_header(handle: Any) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(handle)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(handle)
    raise ValueError(f"npy format {version} is not one this job writes")


# What a pipeline gathers rows from: an array in memory, or rows on disk read when gathered.
Rows = np.ndarray | DiskRows


def rows_of(images: Rows, start: int, stop: int) -> np.ndarray:
    """A copy of rows start..stop of an array or DiskRows (stop may pass the end)."""
    return images[np.arange(start, min(stop, len(images)))]
