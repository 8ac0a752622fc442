"""demo data and device policy: pure parts, no TensorFlow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from kgg.cli.demo import IMAGES_PER_CLASS, SPECIES, TEST_IMAGES, make_dataset
from kgg.job import folders
from kgg.job import images as images_lib
from kgg.job.runtime import Precision, Runtime


def test_demo_data_has_twelve_imbalanced_classes_odd_formats_and_corrupt_files(
    tmp_path: Path,
) -> None:
    counts = make_dataset(tmp_path)
    assert counts == dict(zip(SPECIES, IMAGES_PER_CLASS, strict=True))
    files = [p for p in (tmp_path / "train").rglob("*") if p.is_file()]
    modes = {Image.open(p).mode for p in files if p.suffix.lower() in {".png", ".jpg"}}
    assert {"RGB", "RGBA", "L"} <= modes
    assert any(p.suffix == ".JPG" for p in files)
    sizes = {Image.open(p).size for p in files if p.suffix == ".png"}
    assert len(sizes) > 10
    images, ok, skipped = images_lib.load_images(
        tmp_path / "test",
        folders.discover_test(tmp_path / "test"),
        32,
        tmp_path / "c",
        progress=False,
    )
    assert (len(ok), [s["file"] for s in skipped]) == (TEST_IMAGES, ["test/truncated.png"])
    assert images.dtype == np.uint8


def test_global_batch_is_rounded_up_to_a_multiple_of_the_replicas() -> None:
    class Strategy:
        num_replicas_in_sync = 3

    runtime = Runtime(Strategy(), ["a", "b", "c"], Precision("mixed_float16", "test"))
    assert [runtime.batch(size) for size in (32, 33, 3, 1)] == [33, 33, 3, 3]


def test_the_demo_trains_as_the_vm_whose_grants_come_from_the_program() -> None:
    from kgg.cli.demo import DEMO_BUCKET, demo_identities

    authority, laptop, vm = demo_identities(DEMO_BUCKET)
    bucket = f"projects/_/buckets/{DEMO_BUCKET}"
    vm_member, laptop_member = authority.member(vm), authority.member(laptop)
    assert authority.allows(vm_member, "storage.objects.create", f"{bucket}/objects/runs/x")
    assert not authority.allows(vm_member, "storage.buckets.get", bucket)
    assert authority.allows(laptop_member, "storage.buckets.get", bucket)
