"""When the training data counts as complete: the pure rule, and the loop against the GCS
emulator."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from kgg.agent.data_wait import Check, Listing, check, wait_for_data

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
SOME = Listing(objects=10, total_bytes=1000, newest="2026-11-27T11:59:00+00:00")


def test_manifest_means_ready_at_once() -> None:
    result = check(now=T0, manifest_present=True, listing=SOME, previous=None)
    assert result.ready
    assert "manifest" in result.reason


def test_empty_train_folder_is_not_ready_however_long_it_stays_empty() -> None:
    empty = Listing(0, 0, "")
    first = check(now=T0, manifest_present=False, listing=empty, previous=None)
    later = check(
        now=T0 + timedelta(hours=1), manifest_present=False, listing=empty, previous=first
    )
    assert not later.ready


def test_changing_train_folder_is_not_ready() -> None:
    first = check(now=T0, manifest_present=False, listing=SOME, previous=None)
    grown = Listing(11, 1100, "2026-11-27T12:09:00+00:00")
    later = check(now=T0 + timedelta(minutes=10), manifest_present=False, listing=grown,
                  previous=first)  # fmt: skip
    assert not later.ready
    assert later.changed_at == T0 + timedelta(minutes=10)


def test_quiet_train_folder_is_ready_after_the_stable_minutes() -> None:
    first = check(now=T0, manifest_present=False, listing=SOME, previous=None)
    almost = check(now=T0 + timedelta(minutes=4), manifest_present=False, listing=SOME,
                   previous=first)  # fmt: skip
    done = check(now=T0 + timedelta(minutes=5), manifest_present=False, listing=SOME,
                 previous=almost)  # fmt: skip
    assert not almost.ready
    assert done.ready
    assert "unchanged for 5 minutes" in done.reason


def test_listing_summarises_sizes_and_newest_update() -> None:
    listing = Listing.of([(5, "2026-01-02"), (7, "2026-01-03"), (1, "2026-01-01")])
    assert listing == Listing(3, 13, "2026-01-03")


def test_wait_for_data_polls_until_the_manifest_arrives(gcs_bucket: str, tmp_path: Path) -> None:
    from tests.iam import client_with, stack

    client = client_with(stack(gcs_bucket).owner_token)
    bucket = client.bucket(gcs_bucket)
    bucket.blob("data/ps/train/Maize/1.png").upload_from_string(b"png")
    polls: list[Check] = []

    def upload_manifest_on_second_poll(_: float) -> None:
        polls.append(Check(False, "", None, None))
        bucket.blob("data/ps/_upload_manifest.json").upload_from_string(b"{}")

    state = tmp_path / "job.json"
    result = wait_for_data(
        gcs_bucket,
        "data/ps",
        state_file=state,
        sleep=upload_manifest_on_second_poll,
        max_polls=5,
        client=client,
    )

    assert result.ready
    assert len(polls) == 1
    assert json.loads(state.read_text())["state"] == "waiting"
