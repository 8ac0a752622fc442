"""Tiny image folders for the training-job tests (no downloads, seconds of CPU), the command
line run in this process, and the runs several test files read."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kgg.cli.main import run as main
from kgg.job.runstate import FAIL_AFTER_ENV

TINY = 32  # the smallest input VGG accepts: keeps every TensorFlow test to seconds
# The options of every tiny run: random weights, 32 px, two epochs of each phase.
TINY_ARGS = ("--weights", "none", "--image-size", str(TINY), "--batch-size", "8",
             "--head-epochs", "2", "--finetune-epochs", "2", "--patience", "5",
             "--workers", "4", "--no-progress")  # fmt: skip


def png_bytes(array: np.ndarray, fmt: str = "PNG") -> bytes:
    """Encodes an array; Pillow picks the mode from shape and dtype (RGBA, L, I;16, RGB)."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt)
    return buffer.getvalue()


def write_class_images(
    folder: Path, label: int, count: int, rng: np.random.Generator, first: int = 0
) -> None:
    """`count` PNGs whose colour depends on `label`, named first.png, first+1.png, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(first, first + count):
        colour = np.zeros(3)
        colour[label % 3] = 200
        pixels = (colour + rng.normal(0, 20, (40, 40, 3))).clip(0, 255).astype(np.uint8)
        (folder / f"{index}.png").write_bytes(png_bytes(pixels))


def write_tiny_data(
    root: Path,
    classes: tuple[str, ...] = ("Charlock", "Maize", "Sugar beet"),
    per_class: int = 6,
    test_images: int = 4,
    seed: int = 0,
) -> Path:
    """train/<class>/*.png whose colour depends on the class, plus test/*.png; returns root."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        write_class_images(root / "train" / name, label, per_class, rng)
    test = root / "test"
    test.mkdir()
    for index in range(test_images):
        pixels = rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)
        (test / f"t{index}.png").write_bytes(png_bytes(pixels))
    return root


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    return write_tiny_data(tmp_path / "data")


@dataclass(frozen=True)
class Result:
    """What one command did: its exit status and what it printed."""

    rc: int
    out: str
    err: str

    def error_line(self) -> str:
        """The command's error: exactly one line, starting `error: `, and nothing after it."""
        lines = self.err.strip().splitlines()
        assert lines, "no error printed"
        assert lines[-1].startswith("error: "), self.err
        assert "Traceback" not in self.err, self.err
        return lines[-1]


@contextlib.contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def workload(
    *argv: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None
) -> Result:
    """`kgg ARGV` run in `cwd` in this process (TensorFlow is imported once per
    test session, not once per command): the CLI's main with its output captured, and echoed so
    that a failing test shows it."""
    out, err = io.StringIO(), io.StringIO()
    with (
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
        contextlib.chdir(cwd or Path.cwd()),
        _environment(env or {}),
    ):
        try:
            rc = main([str(arg) for arg in argv])
        except SystemExit as stop:  # argparse rejects an option
            rc = int(stop.code or 0)
    sys.stdout.write(out.getvalue())
    sys.stderr.write(err.getvalue())
    return Result(rc, out.getvalue(), err.getvalue())


def train_argv(*extra: str | Path, data: str | Path = "data") -> list[str | Path]:
    """`train` on ./data (or `data`) into ./out, caching in ./cache, tiny options: paths
    relative to the run's folder, so that a copy of the folder runs the very same command."""
    return ["train", "--data", data, "--out", "out", "--cache-dir", "cache", *TINY_ARGS,
            *extra]  # fmt: skip


def copy_run(source: Path, target: Path) -> Path:
    """A copy of a run's folder (data, out, cache), modification times kept: the local data's
    identity is names, sizes and times, so the copy's command is the same run."""
    shutil.copytree(source, target, symlinks=True, dirs_exist_ok=True)
    return target


@dataclass(frozen=True)
class TinyRun:
    """A run of `kgg train` on tiny data: root/data, root/out, root/cache."""

    root: Path
    data: Path
    result: Result

    @property
    def out(self) -> Path:
        return self.root / "out"


@pytest.fixture(scope="session")
def fast_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    """The fast recipe run once, uninterrupted, on tiny data with a stray text file."""
    root = tmp_path_factory.mktemp("fast")
    write_tiny_data(root / "data")
    (root / "data/train/Maize/notes.txt").write_text("not an image")
    result = workload(*train_argv(), cwd=root)
    assert result.rc == 0, result.err
    return TinyRun(root, root / "data", result)


@pytest.fixture(scope="session")
def killed_run(fast_run: TinyRun, tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    """fast_run's command killed after the features pass and head epoch 1, in a folder of its
    own with a copy of the data; tests copy it before changing it."""
    root = tmp_path_factory.mktemp("killed")
    shutil.copytree(fast_run.data, root / "data", symlinks=True)
    result = workload(*train_argv(), cwd=root, env={FAIL_AFTER_ENV: "2"})
    assert result.rc == 75, result.err
    return TinyRun(root, root / "data", result)
