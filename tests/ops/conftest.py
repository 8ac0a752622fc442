"""Fixtures for the laptop commands: a tiny local dataset and a parser with the commands on it."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from workload import ops_cli

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
    """The commands as `python -m workload` registers them."""
    parser = argparse.ArgumentParser(prog="workload")
    ops_cli.add_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def run_cli(parser: argparse.ArgumentParser, *argv: str) -> int:
    args = parser.parse_args(list(argv))
    return args.func(args)
