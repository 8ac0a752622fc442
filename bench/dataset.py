"""A synthetic image folder shaped like the Kaggle Plant Seedlings data, generated once, seeded.

Same layout (train/<class>/*.png, test/*.png), the real per-class counts (221..654, 4750 in all),
and a size mix from ~50 px to 2000+ px with most images a few hundred px, some RGBA. Pixels are a
soil-like textured background with green blobs and per-pixel noise, so PNG files decode at a cost
close to real photos (noise defeats the easy compression a flat synthetic image would get).
Decode speed depends on pixels, not on what they show, so the pipeline figures carry over.
"""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATASET_VERSION = 1

# The real training set's images per class (Kaggle "Plant Seedlings Classification"), 4750 in all.
REAL_CLASS_COUNTS: dict[str, int] = {
    "Black-grass": 263,
    "Charlock": 390,
    "Cleavers": 287,
    "Common Chickweed": 611,
    "Common wheat": 221,
    "Fat Hen": 475,
    "Loose Silky-bent": 654,
    "Maize": 221,
    "Scentless Mayweed": 516,
    "Shepherds Purse": 231,
    "Small-flowered Cranesbill": 496,
    "Sugar beet": 385,
}
REAL_TRAIN_IMAGES = sum(REAL_CLASS_COUNTS.values())
REAL_TEST_IMAGES = 794

# (probability, smallest side, largest side): most images a few hundred px, a tail of large ones.
SIZE_MIX: tuple[tuple[float, int, int], ...] = (
    (0.20, 50, 150),
    (0.60, 150, 500),
    (0.16, 500, 1000),
    (0.04, 1000, 2200),
)
# Small sources for the scale runs (bench/scale.py): decoded and resized to the job's image size
# like any other, so the caches, the pipelines and the models are full size, while generating
# 55,000 of them takes seconds.
SMALL_SIZE_MIX: tuple[tuple[float, int, int], ...] = ((1.0, 24, 64),)
ALPHA_FRACTION = 0.25
# zlib level 1: generation stays quick; inflate speed hardly depends on the level.
PNG_COMPRESS_LEVEL = 1


@dataclass(frozen=True)
class ImageSpec:
    path: str
    width: int
    height: int
    alpha: bool
    seed: int


def scaled_counts(total: int) -> dict[str, int]:
    """The real class proportions scaled to `total` images (largest remainders, at least 1 each)."""
    if total < len(REAL_CLASS_COUNTS):
        raise ValueError(f"total {total} is below the {len(REAL_CLASS_COUNTS)} classes")
    exact = {k: v * total / REAL_TRAIN_IMAGES for k, v in REAL_CLASS_COUNTS.items()}
    counts = {k: max(1, int(v)) for k, v in exact.items()}
    by_remainder = sorted(exact, key=lambda k: exact[k] - int(exact[k]), reverse=True)
    index = 0
    while sum(counts.values()) < total:
        counts[by_remainder[index % len(by_remainder)]] += 1
        index += 1
    while sum(counts.values()) > total:
        largest = max(counts, key=lambda k: counts[k])
        counts[largest] -= 1
    return counts


def plan(
    train_images: int,
    test_images: int,
    seed: int,
    size_mix: tuple[tuple[float, int, int], ...] = SIZE_MIX,
) -> list[ImageSpec]:
    """Every image to generate, in a fixed order, with its size and alpha drawn from `seed`."""
    rng = np.random.default_rng(seed)
    probabilities = np.array([p for p, _, _ in size_mix])
    paths = [
        f"train/{name}/{index:04d}.png"
        for name, count in scaled_counts(train_images).items()
        for index in range(count)
    ] + [f"test/{index:04d}.png" for index in range(test_images)]
    specs = []
    for index, path in enumerate(paths):
        bucket = rng.choice(len(size_mix), p=probabilities / probabilities.sum())
        _, low, high = size_mix[bucket]
        side = int(np.exp(rng.uniform(np.log(low), np.log(high))))
        # Most photos are square-ish; a third are up to 1.5x wider or taller.
        aspect = 1.0 if rng.random() < 0.67 else rng.uniform(0.67, 1.5)
        width, height = side, max(16, int(side * aspect))
        specs.append(
            ImageSpec(path, width, height, bool(rng.random() < ALPHA_FRACTION), seed + index)
        )
    return specs


def render(spec: ImageSpec) -> np.ndarray:
    """The pixels of one image: (height, width, 3 or 4) uint8."""
    rng = np.random.default_rng(spec.seed)
    from PIL import Image

    # A coarse random field upscaled: soil with smooth variation, plus green blobs.
    coarse = rng.integers(60, 140, size=(8, 8, 3), dtype=np.uint8)
    coarse[..., 2] //= 2
    for _ in range(rng.integers(2, 6)):
        y, x = rng.integers(1, 7, size=2)
        coarse[y - 1 : y + 1, x - 1 : x + 1] = (40, rng.integers(120, 200), 40)
    size = (spec.width, spec.height)
    base = np.asarray(Image.fromarray(coarse).resize(size, Image.Resampling.BILINEAR))
    noise = rng.integers(-8, 9, size=base.shape, dtype=np.int16)
    pixels = np.clip(base.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    if spec.alpha:
        alpha = np.full((spec.height, spec.width, 1), 255, np.uint8)
        pixels = np.concatenate([pixels, alpha], axis=-1)
    return pixels


def _write(root: Path, spec: ImageSpec) -> int:
    from PIL import Image

    path = root / spec.path
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = render(spec)
    Image.fromarray(pixels, "RGBA" if spec.alpha else "RGB").save(
        path, compress_level=PNG_COMPRESS_LEVEL
    )
    return path.stat().st_size


def ensure(
    root: Path,
    train_images: int,
    test_images: int,
    seed: int = 2018,
    size_mix: tuple[tuple[float, int, int], ...] = SIZE_MIX,
) -> dict:
    """Generates the dataset under `root` unless a complete one with the same plan is there.

    `_complete.json` is written last: a folder without it (an interrupted run) is regenerated."""
    marker = root / "_complete.json"
    wanted: dict = {
        "version": DATASET_VERSION,
        "train": train_images,
        "test": test_images,
        "seed": seed,
    }
    if size_mix != SIZE_MIX:  # the full-size data's marker stays as it was
        wanted["size_mix"] = [list(part) for part in size_mix]
    if marker.is_file():
        done = json.loads(marker.read_text())
        same_sources = done.get("size_mix") == wanted.get("size_mix")
        if same_sources and all(done.get(k) == v for k, v in wanted.items()):
            return done
    if root.exists():
        shutil.rmtree(root)
    specs = plan(train_images, test_images, seed, size_mix)
    workers = len(os.sched_getaffinity(0))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        sizes = list(pool.map(_write, [root] * len(specs), specs, chunksize=16))
    pixels = [s.width * s.height for s in specs]
    summary = {
        **wanted,
        "classes": scaled_counts(train_images),
        "bytes": int(sum(sizes)),
        "megapixels": round(sum(pixels) / 1e6, 1),
        "side_px": {
            "min": min(min(s.width, s.height) for s in specs),
            "median": int(np.median([max(s.width, s.height) for s in specs])),
            "max": max(max(s.width, s.height) for s in specs),
        },
        "rgba": sum(s.alpha for s in specs),
    }
    marker.write_text(json.dumps(summary, indent=1))
    return summary
