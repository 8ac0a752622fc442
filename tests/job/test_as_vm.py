"""The training job and the shared storage code as the VM runs them: with the VM's own identity
(`as_vm`: its token from the metadata server), which holds roles/storage.objectAdmin on the bucket
and nothing else, enforced by the GCS front as real GCS enforces it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.api_core import exceptions as api

from kgg.common import storage
from kgg.common.emulator import acting_as
from tests.iam import Stack, client_with
from tests.job.conftest import TINY_ARGS, workload, write_tiny_data


def _upload_as_the_laptop(iam_stack: Stack, data: Path, url: str) -> None:
    """Data copied to the bucket by the laptop user, without `kgg upload` (no manifest)."""
    with acting_as(iam_stack.owner_token):
        storage.upload_tree(data, url)


def test_the_vm_identity_is_enforced_objectadmin_only(gcs_bucket: str, as_vm: object) -> None:
    with pytest.raises(api.Forbidden, match=r"storage\.buckets\.get"):
        storage.client().bucket(gcs_bucket).reload()
    storage.write_bytes(f"gs://{gcs_bucket}/a.txt", b"vm")  # objects: yes
    assert storage.read_bytes(f"gs://{gcs_bucket}/a.txt") == b"vm"


def test_a_fresh_gs_run_as_the_vm_exits_0_with_its_results(
    gcs_bucket: str, tmp_path: Path, iam_stack: Stack, as_vm: object
) -> None:
    _upload_as_the_laptop(iam_stack, write_tiny_data(tmp_path / "data"), f"gs://{gcs_bucket}/data")
    out = f"gs://{gcs_bucket}/runs/fresh"

    result = workload(
        "train", "--data", f"gs://{gcs_bucket}/data", "--out", out,
        "--cache-dir", tmp_path / "cache", *TINY_ARGS, cwd=tmp_path,
    )  # fmt: skip

    assert result.rc == 0, result.err
    written = {info.name for info in storage.list_objects(out)}
    assert {"metrics.json", "progress.json", "model.keras", "submission.csv"} <= written
    progress = json.loads(storage.read_bytes(f"{out}/progress.json") or b"{}")
    assert progress["state"] == "done"


def test_a_missing_object_is_none_for_the_vm(gcs_bucket: str, as_vm: object) -> None:
    assert storage.read_bytes(f"gs://{gcs_bucket}/runs/new/progress.json") is None
    assert storage.read_json(f"gs://{gcs_bucket}/status/cost.json") is None


def test_a_bucket_that_does_not_exist_is_still_one_clear_line(as_vm: object) -> None:
    with pytest.raises(storage.StorageError) as raised:
        storage.read_bytes("gs://kgg-no-such-bucket/status/startup.json")
    message = str(raised.value)
    assert "\n" not in message
    assert "bucket 'kgg-no-such-bucket' does not exist" in message


def test_the_vm_cannot_read_another_bucket_and_is_told_so(
    gcs_bucket: str, iam_stack: Stack, as_vm: object
) -> None:
    other = client_with(iam_stack.owner_token).create_bucket("kgg-someone-elses")
    try:
        with pytest.raises(storage.StorageError, match="no permission on bucket"):
            storage.read_bytes("gs://kgg-someone-elses/secret.txt")
    finally:
        other.delete(force=True)
