"""The local rehearsal: synthetic seedlings in a GCS emulator bucket, then the VM's train command.

It exercises everything the VM run does (gs:// data with a manifest and corrupt files, the image
cache, both phases, progress.json, backups and every result file) at CPU size: 64 px images,
random initial weights, a few epochs. Accuracy here says the plumbing works, not that VGG does.
"""

from __future__ import annotations

import argparse
import colorsys
import contextlib
import io
import json
import logging
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kgg.common import storage
from kgg.common.contract import MANIFEST_NAME, METRIC_ID, METRICS_FILE, RUNS_PREFIX
from kgg.common.emulator import acting_as, running_emulator
from kgg.common.errors import UserError

DEMO_BUCKET = "kgg-demo"
# The Kaggle Plant Seedlings classes, so the results look like the real run's.
SPECIES = (
    "Black-grass", "Charlock", "Cleavers", "Common Chickweed", "Common wheat", "Fat Hen",
    "Loose Silky-bent", "Maize", "Scentless Mayweed", "Shepherds Purse",
    "Small-flowered Cranesbill", "Sugar beet",
)  # fmt: skip
# Small, imbalanced like the real data (221 to 654 per class), so class weights matter.
IMAGES_PER_CLASS = (14, 22, 16, 24, 12, 20, 24, 12, 20, 12, 18, 16)
TEST_IMAGES = 24
DEMO_OPTIONS = [
    "--weights", "none", "--image-size", "64", "--batch-size", "16",
    "--head-epochs", "20", "--finetune-epochs", "2", "--patience", "5",
    "--guide-epochs", "3",
]  # fmt: skip


class DemoFailed(UserError):
    """The rehearsed train command failed (its error is above): demo exits with its code."""

    def __init__(self, code: int) -> None:
        super().__init__(f"the demo's train command exited {code}; its error is above")
        self.exit_code = code


def seedling(species: int, rng: np.random.Generator) -> np.ndarray:
    """A fake top-down seedling photo: soil-coloured noise and leaves whose colour, count and
    shape depend on the species; size varies like the real images (small to largish)."""
    from PIL import Image, ImageDraw

    size = int(rng.integers(40, 200))
    soil = rng.normal((96, 72, 48), 18, (size, size, 3)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(soil)
    draw = ImageDraw.Draw(image)
    # Each species its own leaf colour (evenly spaced hues): learnable even from random features.
    hue = 255 * np.array(colorsys.hsv_to_rgb(species / len(SPECIES), 0.85, 0.9))
    leaves = 1 + species % 4
    elongation = 1.0 + (species % 3)
    center = size / 2 + rng.normal(0, size / 12, 2)
    for leaf in range(leaves):
        angle = 2 * np.pi * leaf / leaves + rng.normal(0, 0.3)
        length = size * (0.25 + 0.03 * (species % 5)) * rng.uniform(0.8, 1.2)
        tip = center + length * np.array([np.cos(angle), np.sin(angle)])
        width = length / (2 * elongation)
        box = [*(np.minimum(center, tip) - width / 2), *(np.maximum(center, tip) + width / 2)]
        colour = tuple(int(c) for c in (hue + rng.normal(0, 12, 3)).clip(0, 255))
        draw.ellipse(box, fill=colour)
    return np.asarray(image)


def _encode(array: np.ndarray, kind: str) -> bytes:
    from PIL import Image

    image = Image.fromarray(array)
    buffer = io.BytesIO()
    if kind == "rgba":
        image.putalpha(255)
        image.save(buffer, "PNG")
    elif kind == "gray":
        image.convert("L").save(buffer, "PNG")
    elif kind == "jpeg":
        image.save(buffer, "JPEG", quality=90)
    else:
        image.save(buffer, "PNG")
    return buffer.getvalue()


def make_dataset(root: Path, seed: int = 0) -> dict[str, int]:
    """Writes train/<species>/*, test/* (with RGBA, grayscale, JPEG and corrupt files) under root;
    returns the image count per class."""
    rng = np.random.default_rng(seed)
    kinds = ["png", "png", "rgba", "jpeg", "png", "gray"]
    counts = {}
    for label, (name, count) in enumerate(zip(SPECIES, IMAGES_PER_CLASS, strict=True)):
        folder = root / "train" / name
        folder.mkdir(parents=True)
        for index in range(count):
            kind = kinds[int(rng.integers(len(kinds)))]
            suffix = ".JPG" if kind == "jpeg" else ".png"
            data = _encode(seedling(label, rng), kind)
            (folder / f"{name[:3].lower()}{index:03d}{suffix}").write_bytes(data)
        counts[name] = count
    test = root / "test"
    test.mkdir()
    for index in range(TEST_IMAGES):
        array = seedling(int(rng.integers(len(SPECIES))), rng)
        (test / f"{index:04x}.png").write_bytes(_encode(array, "png"))
    # What real uploads contain: a file that is not an image, and a truncated one.
    (root / "train" / "Maize" / "notes.txt").write_text("taken on a cloudy day\n")
    (test / "truncated.png").write_bytes(_encode(seedling(0, rng), "png")[:200])
    return counts


def demo_identities(bucket: str) -> tuple[Any, str, str]:
    """The authority the emulator's front enforces: the program's grants for a stack whose bucket
    is `bucket` (declared under Pulumi's mocks, kgg/infra/declared.py), with the laptop user as the
    project's Owner; and the tokens of the laptop user and of the VM's account."""
    from kgg.infra import access, declared

    resources = declared.declare(
        {"allowedSourceRanges": ["192.0.2.0/32"], "gcp:project": "kgg-demo-project"},
        declared.Cloud(bucket=bucket),
    )
    laptop = "user:you@example.com"
    grants = access.from_resources(resources).with_owner(laptop)
    authority = access.Authority(grants)
    return authority, authority.issue(laptop), authority.issue(grants.identities[access.VM])


@dataclass(frozen=True)
class DemoBucket:
    data: str  # the gs:// prefix of the synthetic data
    laptop: str  # the laptop user's token (the project's Owner)
    vm: str  # the VM's account's token, held to what the stack grants it


@contextlib.contextmanager
def demo_bucket(scratch: Path) -> Iterator[DemoBucket]:
    """The synthetic data, written under `scratch` and uploaded with its manifest to an emulator
    bucket whose front enforces the stack's grants; for the block."""
    # The emulator logs every 404 as an error; the job probes for progress/state files on purpose.
    logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)
    counts = make_dataset(scratch / "data")
    print(f"demo: {sum(counts.values())} synthetic images in {len(counts)} classes")
    authority, laptop, vm = demo_identities(DEMO_BUCKET)
    with running_emulator(DEMO_BUCKET, authority) as url:
        data = f"gs://{DEMO_BUCKET}/data"
        with acting_as(laptop):
            stats = storage.upload_tree(scratch / "data", data, progress=True)
            manifest = {"version": 1, "classes": counts, "test": TEST_IMAGES + 1}
            storage.write_json(f"{data}/{MANIFEST_NAME}", manifest)
        print(f"demo: emulator at {url}, uploaded {stats.copied} files to {data}")
        yield DemoBucket(data, laptop, vm)


def run_demo(args: argparse.Namespace) -> None:
    """Generates the data, serves it from an emulator bucket and runs the VM's train command with
    the VM's identity, which the emulator's front holds to what the stack grants it."""
    from kgg.job.cli import run_job

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kgg-demo-") as scratch:
        scratch_dir = Path(scratch)
        with demo_bucket(scratch_dir) as bucket:
            data, out = bucket.data, f"gs://{DEMO_BUCKET}/{RUNS_PREFIX}demo"
            laptop, vm = bucket.laptop, bucket.vm
            command = ["train", "--data", data, "--out", out, "--recipe", args.recipe]
            command += [*DEMO_OPTIONS, "--cache-dir", str(scratch_dir / "cache")]
            print("demo: kgg " + " ".join(command) + "  (as the VM's account)")
            with acting_as(vm):
                code = run_job(command)
            if code:
                raise DemoFailed(code)
            with acting_as(laptop):
                _report(out, args)
    print(f"demo finished in {time.perf_counter() - started:.0f} s")


def _report(out: str, args: argparse.Namespace) -> None:
    """The run's metrics and artifacts, as the laptop user reads them."""
    metrics = storage.read_json(f"{out}/{METRICS_FILE}") or {}
    scored_on = metrics.get("scored_on", "validation")
    print(f"\n{scored_on} metrics (synthetic data, random initial weights):")
    for key in ("accuracy", METRIC_ID, "macro_f1"):
        print(f"  {key:10s} {metrics.get(key, float('nan')):.3f}")
    print(
        f"  skipped    {metrics['skipped_files']['count']} files: "
        + ", ".join(f["file"] for f in metrics["skipped_files"]["files"])
    )
    print(f"  seconds    {json.dumps(metrics.get('wall_seconds'))}")
    print(f"\nartifacts in {out}:")
    for info in storage.list_objects(out):
        if not info.name.startswith("backup/"):
            print(f"  {info.name:24s} {info.size:>12,d} bytes")
    if args.keep:
        storage.download_tree(out, args.keep, progress=False)
        print(f"copied to {args.keep}")
