"""Tiny image folders for the training-job tests (no downloads, seconds of CPU)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TINY = 32  # the smallest input VGG accepts: keeps every TensorFlow test to seconds


def png_bytes(array: np.ndarray, fmt: str = "PNG") -> bytes:
    """Encodes an array; Pillow picks the mode from shape and dtype (RGBA, L, I;16, RGB)."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt)
    return buffer.getvalue()


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
        folder = root / "train" / name
        folder.mkdir(parents=True)
        for index in range(per_class):
            colour = np.zeros(3)
            colour[label % 3] = 200
            pixels = (colour + rng.normal(0, 20, (40, 40, 3))).clip(0, 255).astype(np.uint8)
            (folder / f"{index}.png").write_bytes(png_bytes(pixels))
    test = root / "test"
    test.mkdir()
    for index in range(test_images):
        pixels = rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)
        (test / f"t{index}.png").write_bytes(png_bytes(pixels))
    return root


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    return write_tiny_data(tmp_path / "data")
