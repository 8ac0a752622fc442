"""A training run whose decoded data is several times its memory bound finishes (issue 23).

The real `kgg train` runs in two child processes through bench/probe.py (every
fit and predict cut to one step; the image cache, the block4 maps of every image and view, the
splits, pipelines, features and results at full size): once on 60 images, once on 3,300. The
large run may hold at most BOUND more than the small one at its peak (ru_maxrss, wait4), while
its decoded images alone are three times that and its maps six times more. The in-memory code
held both: it grew by about 1.4 GB here.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from kgg.job import arrays
from kgg.job import images as images_lib
from tests.job.conftest import write_class_images

REPO = Path(__file__).resolve().parents[2]
CLASSES = ("Charlock", "Maize", "Sugar beet")
SIZE = 224  # the job's default: full-size rows of 150 KB, maps of 200 KB
BOUND = 150 * 1024**2


def _data(root: Path, per_class: int, test: int) -> Path:
    rng = np.random.default_rng(1)
    for label, name in enumerate(CLASSES):
        write_class_images(root / "train" / name, label, per_class, rng)
    (root / "test").mkdir()
    write_class_images(root / "test", 0, test, rng)
    return root


def _start(root: Path) -> subprocess.Popen[bytes]:
    args = [
        sys.executable, "-m", "bench.probe", "1", "--", "--data", str(root / "data"),
        "--out", str(root / "out"), "--cache-dir", str(root / "cache"), "--weights", "none",
        "--image-size", str(SIZE), "--head-epochs", "1", "--finetune-epochs", "1",
        "--no-progress",
    ]  # fmt: skip
    log = (root / "job.log").open("wb")
    return subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


def _peak(child: subprocess.Popen[bytes], root: Path) -> int:
    """The child's peak RSS in bytes once it ended; its log when it failed."""
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    assert child.returncode == 0, (root / "job.log").read_text()[-3000:]
    return usage.ru_maxrss * 1024  # Linux: KiB


def test_a_run_on_data_many_times_its_memory_bound_finishes_within_the_bound(
    tmp_path: Path,
) -> None:
    small, large = tmp_path / "small", tmp_path / "large"
    _data(small / "data", per_class=20, test=6)
    _data(large / "data", per_class=1100, test=60)
    children = [(_start(root), root) for root in (small, large)]  # side by side: half the time
    baseline, peak = (_peak(child, root) for child, root in children)

    images = arrays.file_bytes(images_lib.image_cache_shape(3360, SIZE), np.dtype(np.uint8))
    maps = (2 * 2310 + 660) * 14 * 14 * 512 * 2  # two views of train, one of validation
    assert images > 3 * BOUND and maps > 6 * BOUND
    grown = peak - baseline
    print(f"peak RSS: {baseline / 2**30:.2f} GiB on 60 images, {peak / 2**30:.2f} on 3,300")
    assert grown <= BOUND, (
        f"3,300 images took {grown / 2**20:.0f} MiB more than 60 at their peak "
        f"({baseline / 2**30:.2f} -> {peak / 2**30:.2f} GiB); the bound is {BOUND / 2**20:.0f}"
    )
    out = large / "out"
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["scored_on"], metrics["samples"], metrics["test_images"]) == (
        "holdout", 330, 60,
    )  # fmt: skip
    assert metrics["epochs"] == {"features": 1, "head": 1, "finetune": 1}
    rows = list(csv.reader((out / "submission.csv").read_text().splitlines()))
    assert len(rows) == 61 and {row[1] for row in rows[1:]} <= set(CLASSES)
    assert (out / "model.keras").is_file()
    # The cache is one row per file, on disk: 3,360 rows of 224 x 224 x 3.
    cached = sorted((large / "cache/images").glob("*.npy"), key=lambda p: p.stat().st_size)
    assert [p.stat().st_size for p in cached] == [
        arrays.file_bytes(images_lib.image_cache_shape(n, SIZE), np.dtype(np.uint8))
        for n in (60, 3300)
    ]
