"""When is the training data complete? The upload command writes `_upload_manifest.json` LAST,
so its presence settles it; data copied with other tools has no manifest, so `train/` counts as
complete once it is non-empty and has not changed for a few minutes.

`check` is pure; `wait_for_data` is the loop the training service runs on the VM (google-cloud-
storage with the VM's service account, or STORAGE_EMULATOR_HOST in tests).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kgg.agent.job_state import write_job_state
from kgg.common.contract import MANIFEST_NAME

STABLE_MINUTES = 5
POLL_SECONDS = 30


@dataclass(frozen=True)
class Listing:
    """What `train/` holds now: enough to notice any change."""

    objects: int
    total_bytes: int
    newest: str  # the latest `updated` timestamp of any object ("" when empty)

    @classmethod
    def of(cls, blobs: Iterable[tuple[int, str]]) -> Listing:
        objects = total = 0
        newest = ""
        for size, updated in blobs:
            objects += 1
            total += size
            newest = max(newest, updated)
        return cls(objects, total, newest)


@dataclass(frozen=True)
class Check:
    ready: bool
    reason: str
    listing: Listing | None
    changed_at: datetime | None  # when the listing last changed (activity for idle shutdown)


def check(
    *,
    now: datetime,
    manifest_present: bool,
    listing: Listing,
    previous: Check | None,
    stable_minutes: int = STABLE_MINUTES,
) -> Check:
    """Ready or not, given this poll and the previous one."""
    if manifest_present:
        return Check(True, "upload manifest present", listing, now)
    if previous is None or previous.listing != listing or previous.changed_at is None:
        changed_at = now
    else:
        changed_at = previous.changed_at
    if listing.objects == 0:
        return Check(False, "no files under train/ yet", listing, changed_at)
    quiet = now - changed_at
    if quiet >= timedelta(minutes=stable_minutes):
        return Check(
            True,
            f"train/ unchanged for {int(quiet.total_seconds() // 60)} minutes "
            f"({listing.objects} files, no manifest)",
            listing,
            changed_at,
        )
    return Check(False, f"train/ still changing ({listing.objects} files)", listing, changed_at)


def wait_for_data(
    bucket: str,
    data_path: str,
    *,
    state_file: Path | None = None,
    stable_minutes: int = STABLE_MINUTES,
    poll_seconds: float = POLL_SECONDS,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    sleep: Callable[[float], Any] = time.sleep,
    max_polls: int | None = None,
    client: Any = None,
) -> Check:
    """Poll the bucket until the data is complete (or max_polls); returns the last check.
    `client` is a google.cloud.storage.Client; by default one with the VM's credentials."""
    if client is None:
        from kgg.common import storage

        client = storage.client()
    prefix = data_path.strip("/")
    previous: Check | None = None
    polls = 0
    while True:
        manifest = client.bucket(bucket).blob(f"{prefix}/{MANIFEST_NAME}").exists()
        blobs = client.list_blobs(bucket, prefix=f"{prefix}/train/")
        listing = Listing.of(
            (b.size or 0, b.updated.isoformat() if b.updated else "") for b in blobs
        )
        result = check(
            now=clock(),
            manifest_present=manifest,
            listing=listing,
            previous=previous,
            stable_minutes=stable_minutes,
        )
        if state_file and (previous is None or result.changed_at != previous.changed_at):
            write_job_state(state_file, "waiting", result.changed_at or clock())
        if previous is None or result.reason != previous.reason:
            print(f"data at gs://{bucket}/{prefix}: {result.reason}", file=sys.stderr, flush=True)
        polls += 1
        if result.ready or (max_polls is not None and polls >= max_polls):
            return result
        previous = result
        sleep(poll_seconds)
