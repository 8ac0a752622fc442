"""Disk space: a cache that does not fit is refused before it is written, in one line naming the
need, the free space and the fixes; a disk that fills up while a cache is written gets the same
line; a rerun after space was freed goes on from the caches already whole."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kgg.job import arrays, diskspace
from kgg.job import images as images_lib
from kgg.job.cli import EXIT_USAGE
from tests.job.conftest import train_argv, workload, write_tiny_data
from tests.prerequisites import unavailable

REPO = Path(__file__).resolve().parents[2]
GB = 10**9


def _free(monkeypatch: pytest.MonkeyPatch, free: int, kept: int = 0) -> None:
    monkeypatch.setattr(diskspace, "room", lambda folder: (free, kept))


def test_a_need_beyond_the_free_space_is_refused_naming_both_and_the_fixes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _free(monkeypatch, 3 * GB, kept=GB // 2)
    need = diskspace.Need(tmp_path / "cache/images", 7_200_000_000, "the decoded images")
    with pytest.raises(diskspace.DiskSpaceError) as refused:
        diskspace.require([need])
    line = str(refused.value)
    assert "\n" not in line
    assert "the decoded images (7.2 GB) need 7.2 GB under" in line
    assert f"{tmp_path}/cache/images" in line
    assert "but 3.0 GB is free there (500.0 MB of it kept for the system)" in line
    assert "--cache-dir" in line and "pulumi config set bootDiskSizeGb" in line
    assert "run the same command again" in line


def test_needs_on_one_disk_add_up_and_a_need_that_fits_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _free(monkeypatch, 10 * GB, kept=GB)
    maps = diskspace.Need(tmp_path / "out", 5 * GB, "the block4 maps of train", "--out")
    val = diskspace.Need(tmp_path / "out", 3 * GB, "the block4 maps of val", "--out")
    diskspace.require([maps, val])  # 8 of the 9 GB the system leaves
    with pytest.raises(diskspace.DiskSpaceError, match=r"train \(5.0 GB\) and .* need 9.5 GB"):
        diskspace.require([maps, val, diskspace.Need(tmp_path, 3 * GB // 2, "more", "--out")])


def test_the_real_free_space_is_read_from_the_nearest_existing_folder(tmp_path: Path) -> None:
    free, kept = diskspace.room(tmp_path / "not" / "there" / "yet")
    usage = shutil.disk_usage(tmp_path)
    assert abs(free - usage.free) < 64 * 1024**2  # other writers may change it meanwhile
    assert kept == min(diskspace.SYSTEM_ROOM, int(usage.total * diskspace.SYSTEM_SHARE))


def test_images_that_do_not_fit_are_refused_before_anything_is_decoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_tiny_data(tmp_path / "data")
    _free(monkeypatch, 1000)
    monkeypatch.setattr(images_lib, "decode_image", lambda *a: pytest.fail("decoded"))
    with pytest.raises(diskspace.DiskSpaceError, match="the decoded images of train/"):
        images_lib.load_train(root, 32, tmp_path / "cache", progress=False)
    assert list((tmp_path / "cache/images").iterdir()) == []


def _disk_fills_at(monkeypatch: pytest.MonkeyPatch, marker: str) -> None:
    """Every row written to a file whose name holds `marker` finds the disk full."""
    write = arrays.RowTarget.write

    def full(self: arrays.RowTarget, fd: int, row: int, values: object) -> None:
        if marker in Path(self.path).name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write(self, fd, row, values)  # type: ignore[arg-type]

    monkeypatch.setattr(arrays.RowTarget, "write", full)


def test_a_disk_that_fills_while_the_maps_are_written_stops_the_run_and_a_rerun_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tiny_data(tmp_path / "data")
    _disk_fills_at(monkeypatch, "maps.train")
    stopped = workload(*train_argv(), cwd=tmp_path)
    assert stopped.rc == EXIT_USAGE
    line = stopped.error_line()
    assert "not enough disk space: the block4 maps of" in line
    assert "--out" in line and "No space left on device" in line
    assert not list((tmp_path / "out/backup/local").glob("*maps*"))  # no half-written file
    progress = json.loads((tmp_path / "out/progress.json").read_text())
    assert (progress["state"], progress["phase"]) == ("failed", "features")

    monkeypatch.undo()  # space freed
    cached = sorted((tmp_path / "cache/images").iterdir())
    stamps = [p.stat().st_mtime_ns for p in cached]
    monkeypatch.setattr(images_lib, "decode_image", lambda *a: pytest.fail("decoded again"))
    finished = workload(*train_argv(), cwd=tmp_path)
    assert finished.rc == 0, finished.err
    assert [p.stat().st_mtime_ns for p in sorted((tmp_path / "cache/images").iterdir())] == stamps
    assert json.loads((tmp_path / "out/progress.json").read_text())["state"] == "done"


def test_a_disk_that_fills_while_images_are_decoded_leaves_no_cache_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tiny_data(tmp_path / "data")
    _disk_fills_at(monkeypatch, ".npy")
    stopped = workload(*train_argv(), cwd=tmp_path)
    assert stopped.rc == EXIT_USAGE
    assert "not enough disk space: the decoded images of test/" in stopped.error_line()
    assert list((tmp_path / "cache/images").iterdir()) == []


FULL_DISK = r"""
import json, os, subprocess, sys
from pathlib import Path

root, size = Path(sys.argv[1]), sys.argv[2]
for folder in ("cache", "out"):
    (root / folder).mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(root / folder)],
                   check=True)


def fill(folder):
    # Leaves the room the job keeps for the system, and one page: no cache fits.
    usage = os.statvfs(folder)
    total, free = usage.f_blocks * usage.f_frsize, usage.f_bavail * usage.f_frsize
    kept = min(512 * 1024**2, int(total * 0.05))
    with open(folder / "filler", "wb") as handle:
        handle.truncate(0)
        os.posix_fallocate(handle.fileno(), 0, free - kept - 4096)


def train():
    command = [sys.executable, "-m", "kgg", *json.loads(sys.argv[3])]
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, check=False)
    stamps = {p.name: p.stat().st_mtime_ns for p in (root / "cache/images").glob("*")}
    return {"rc": done.returncode, "err": done.stderr, "out": done.stdout, "images": stamps}


runs = []
fill(root / "cache")
runs.append(train())  # the image cache does not fit
(root / "cache/filler").unlink()
fill(root / "out")
runs.append(train())  # the images fit, the maps in out/backup/local do not
(root / "out/filler").unlink()
runs.append(train())  # space freed: goes on
print(json.dumps(runs))
"""


def test_a_real_full_disk_refuses_each_cache_in_one_line_and_a_rerun_after_freeing_goes_on(
    tmp_path: Path,
) -> None:
    """Two small tmpfs (cache, out) in a mount namespace of their own, filled up but for what the
    job keeps for the system: refused at the images, then at the maps, then the run finishes
    without decoding again."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        unavailable("a real full disk needs root and unshare (util-linux)", "KGG_REQUIRE_MOUNTS")
    write_tiny_data(tmp_path / "data")
    argv = [str(a) for a in train_argv()]
    child = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", FULL_DISK,
         str(tmp_path), "1g", json.dumps(argv)],
        capture_output=True, text=True, timeout=600, check=False, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    if child.returncode != 0 and "mount" in child.stderr and "ermission" in child.stderr:
        unavailable(f"no mount namespace here: {child.stderr.strip()}", "KGG_REQUIRE_MOUNTS")
    assert child.returncode == 0, child.stderr
    images, maps, finished = json.loads(child.stdout)
    for refused, what, option in ((images, "the decoded images of test/", "--cache-dir"),
                                  (maps, "the block4 maps of", "--out")):  # fmt: skip
        assert refused["rc"] == EXIT_USAGE, refused["err"]
        line = refused["err"].strip().splitlines()[-1]
        assert line.startswith("error: not enough disk space: " + what), refused["err"]
        assert option in line and "bootDiskSizeGb" in line
    assert images["images"] == {}
    assert finished["rc"] == 0, finished["err"]
    assert finished["images"] == maps["images"] != {}  # the cache made before the maps, kept
    assert "done: held-out micro-F1" in finished["out"]
