"""What a bucket writer can plant: object names GCS accepts that aim outside a download folder.

Needs the `gcs_bucket_like_real_gcs` fixture (tests/conftest.py): the emulator refuses `..`."""

from __future__ import annotations

from pathlib import Path

from kgg.common import storage


def plant_hostile_objects(bucket: str, prefix: str, victim: Path, content: bytes) -> None:
    """Objects under `prefix` that GCS accepts and that land on `victim` when joined naively: one
    climbing out with `..`, one absolute after an empty segment (with the twin its download
    reads when the source URL's `//` is collapsed). Each aims at its own `<victim>.<how>`."""
    relative = str(victim).lstrip("/")
    for name in (
        f"{prefix}/{'../' * 30}{relative}.dotdot",
        f"{prefix}//{relative}.absolute",
        f"{prefix}/{relative}.absolute",
    ):
        storage.write_bytes(f"gs://{bucket}/{name}", content)


def victims_untouched(victim: Path) -> bool:
    return not Path(f"{victim}.dotdot").exists() and not Path(f"{victim}.absolute").exists()
