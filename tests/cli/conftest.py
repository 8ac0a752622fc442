"""Fixtures for the laptop commands: a tiny local dataset and a parser with the commands on it."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kgg.cli import main as cli_main

REPO_ROOT = Path(__file__).resolve().parents[2]
CLASSES = {"Black-grass": 3, "Charlock": 2, "Maize": 4}
TEST_IMAGES = 2


def make_dataset(root: Path, train_name: str = "train") -> Path:
    """train/<class>/*.png and test/*.png with distinct bytes (content is not decoded here)."""
    for name, count in CLASSES.items():
        folder = root / train_name / name
        folder.mkdir(parents=True)
        for index in range(count):
            (folder / f"{index}.png").write_bytes(f"{name}-{index}".encode() * 50)
    (root / "test").mkdir()
    for index in range(TEST_IMAGES):
        (root / "test" / f"t{index}.png").write_bytes(f"test-{index}".encode() * 50)
    return root


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "seedlings")


@pytest.fixture
def parser() -> argparse.ArgumentParser:
    """The commands as `kgg` registers them."""
    parser = argparse.ArgumentParser(prog="workload")
    cli_main.add_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def run_cli(parser: argparse.ArgumentParser, *argv: str) -> int:
    args = parser.parse_args(list(argv))
    return cli_main.dispatch(args)


def run_workload(
    *argv: str, cwd: Path, program: tuple[str, ...] = ("-m", "kgg")
) -> subprocess.CompletedProcess[str]:
    """`kgg ARGV` in a fresh interpreter, as a user runs it (the emulator's
    STORAGE_EMULATOR_HOST is inherited)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, *program, *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
