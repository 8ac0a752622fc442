"""arrays: .npy files written row by row and read row by row, so that the process holds the rows
it gathered, never the file."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from kgg.job import arrays
from kgg.job.arrays import DiskRows


def _written(path: Path, values: np.ndarray) -> DiskRows:
    target = arrays.create(path, values.shape, values.dtype)
    fd = os.open(path, os.O_WRONLY)
    try:
        for row in range(len(values)):
            target.write(fd, row, values[row])
    finally:
        os.close(fd)
    return DiskRows.open(path)


def test_rows_written_in_place_read_back_as_an_ordinary_npy(tmp_path: Path) -> None:
    values = np.arange(5 * 4 * 3, dtype=np.uint16).reshape(5, 4, 3)
    rows = _written(tmp_path / "a.npy", values)
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), values)
    assert (len(rows), rows.shape, rows.dtype, rows.nbytes) == (5, (5, 4, 3), np.uint16, 120)
    assert arrays.file_bytes(values.shape, values.dtype) == (tmp_path / "a.npy").stat().st_size


def test_slices_are_views_and_position_arrays_gather_copies_in_their_order(
    tmp_path: Path,
) -> None:
    values = np.arange(10 * 2, dtype=np.float32).reshape(10, 2)
    rows = _written(tmp_path / "b.npy", values)
    view = rows[2:8]
    assert isinstance(view, DiskRows) and len(view) == 6
    np.testing.assert_array_equal(view[np.array([3, 0, 3])], values[[5, 2, 5]])
    subset = view.subset(np.array([5, 1]))  # file rows 7 and 3
    np.testing.assert_array_equal(subset[np.arange(2)], values[[7, 3]])
    np.testing.assert_array_equal(subset[:1][np.array([0])], values[[7]])
    gathered = rows[np.array([9, 0])]
    gathered[0] = -1  # a copy: the file is read-only and unchanged
    np.testing.assert_array_equal(rows[np.array([9])], values[[9]])
    np.testing.assert_array_equal(arrays.rows_of(rows, 8, 20), values[8:])
    np.testing.assert_array_equal(rows[3], values[3])  # one row, as numpy gives it
    np.testing.assert_array_equal(view[-1], values[7])
    np.testing.assert_array_equal(rows[np.array([-1, 0])], values[[9, 0]])
    with pytest.raises(IndexError, match="of 6 rows"):
        view[np.array([6])]


def test_rows_on_disk_are_never_materialised_by_accident(tmp_path: Path) -> None:
    rows = _written(tmp_path / "c.npy", np.zeros((4, 3), np.uint8))
    with pytest.raises(TypeError, match="gathered by index"):
        np.asarray(rows)
    with pytest.raises(TypeError, match="integer positions"):
        rows[np.array([0.5])]


def test_sixteen_bit_rows_read_as_another_dtype_of_their_width(tmp_path: Path) -> None:
    import ml_dtypes

    bf16 = np.dtype(ml_dtypes.bfloat16)
    values = np.array([[1.5, -2.0], [3.0, 0.25]], dtype=bf16)
    rows = _written(tmp_path / "d.npy", values.view(np.uint16))
    np.testing.assert_array_equal(rows.view(bf16)[np.arange(2)], values)
    with pytest.raises(ValueError, match="as wide"):
        rows.view(np.dtype(np.float32))


@pytest.mark.parametrize(
    "damage",
    [lambda p: p.write_bytes(p.read_bytes()[:-7]), lambda p: p.write_bytes(b"\x93NUMPY junk")],
    ids=["truncated", "not-npy"],
)
def test_a_file_that_is_not_a_whole_npy_is_named(
    tmp_path: Path, damage: Callable[[Path], object]
) -> None:
    path = tmp_path / "e.npy"
    _written(path, np.ones((3, 5), np.uint8))
    damage(path)
    with pytest.raises(arrays.ArrayFileError, match=r"e\.npy"):
        DiskRows.open(path)


def test_the_blocks_are_reserved_when_the_file_is_created(tmp_path: Path) -> None:
    path = tmp_path / "f.npy"
    arrays.create(path, (256, 1024), np.dtype(np.uint8))
    assert path.stat().st_blocks * 512 >= 256 * 1024  # allocated, not a sparse file


def _resident_kib(path: Path) -> int:
    """The process's resident memory in its maps of `path` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5:  # a mapping's first line
            inside = fields[-1] == str(path)
        elif inside and fields[0] == "Rss:":
            total += int(fields[1])
    return total


def _vm_rss_kib() -> int:
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self is Linux's")
def test_gathering_every_row_leaves_the_process_holding_none_of_the_file(tmp_path: Path) -> None:
    """64 MB read in random batches of 32 rows: the page cache holds the file, the process
    only the batch it copied. Through numpy's memory map the same reads keep the whole file
    resident in the process."""
    path = tmp_path / "g.npy"
    rows_count, row = 1024, 64 * 1024
    target = arrays.create(path, (rows_count, row), np.dtype(np.uint8))
    fd = os.open(path, os.O_WRONLY)
    for start in range(0, rows_count, 128):
        target.write(fd, start, np.full((128, row), start % 251, np.uint8))
    os.close(fd)
    rows = DiskRows.open(path)
    order = np.random.default_rng(0).permutation(rows_count)
    rows[order[:32]]  # the code paths' own pages, before measuring
    before, most, total = _vm_rss_kib(), 0, 0
    for start in range(0, rows_count, 32):
        batch = rows[order[start : start + 32]]
        total += int(batch[:, 0].astype(np.int64).sum())
        most = max(most, _vm_rss_kib() - before)
        del batch
    assert total == sum((r // 128 * 128) % 251 for r in range(rows_count))
    assert most < 12 * 1024, f"the process grew by {most} KiB reading a 64 MiB file"
    assert _resident_kib(path) == 0  # nothing of it is mapped
    mapped = np.load(path, mmap_mode="r")
    for start in range(0, rows_count, 32):
        mapped[np.sort(order[start : start + 32])].sum()
    assert _resident_kib(path) > 60 * 1024
