"""The synthetic dataset: the real class proportions, the size mix, and a tiny generated copy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench import dataset


def test_full_scale_counts_are_the_real_ones():
    counts = dataset.scaled_counts(4750)
    assert counts == dataset.REAL_CLASS_COUNTS
    assert (min(counts.values()), max(counts.values()), sum(counts.values())) == (221, 654, 4750)


@pytest.mark.parametrize("total", [12, 60, 120, 999])
def test_scaled_counts_sum_to_the_total_and_keep_the_imbalance(total: int):
    counts = dataset.scaled_counts(total)
    assert sum(counts.values()) == total
    assert min(counts.values()) >= 1
    if total >= 120:
        assert counts["Loose Silky-bent"] > 2 * counts["Maize"]


def test_size_mix_is_mostly_a_few_hundred_px_with_a_tail_past_2000():
    specs = dataset.plan(4750, 794, seed=2018)
    sides = np.array([max(s.width, s.height) for s in specs])
    assert len(specs) == 4750 + 794
    assert 200 <= np.median(sides) <= 500
    assert sides.min() < 60 and sides.max() > 2000
    assert 0.15 < np.mean([s.alpha for s in specs]) < 0.35


def test_plan_is_deterministic_for_a_seed():
    assert dataset.plan(50, 5, seed=1) == dataset.plan(50, 5, seed=1)
    assert dataset.plan(50, 5, seed=1) != dataset.plan(50, 5, seed=2)


def test_generated_folder_has_the_class_layout_alpha_pngs_and_a_marker(tmp_path: Path):
    root = tmp_path / "data"
    summary = dataset.ensure(root, 24, 3, seed=7)
    counts = {p.name: len(list(p.glob("*.png"))) for p in (root / "train").iterdir()}
    assert counts == dataset.scaled_counts(24)
    assert len(list((root / "test").glob("*.png"))) == 3
    modes = {Image.open(p).mode for p in root.rglob("*.png")}
    assert modes == {"RGB", "RGBA"}
    assert json.loads((root / "_complete.json").read_text()) == summary


def test_an_interrupted_generation_without_its_marker_is_redone(tmp_path: Path):
    root = tmp_path / "data"
    dataset.ensure(root, 12, 0, seed=3)
    (root / "_complete.json").unlink()
    stray = root / "train" / "stray.png"
    stray.write_bytes(b"partial")
    dataset.ensure(root, 12, 0, seed=3)
    assert not stray.exists()
    assert (root / "_complete.json").is_file()
