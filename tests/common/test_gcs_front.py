"""The IAM-enforcing front before the GCS emulator (kgg/common/gcs_front.py): it refuses what GCS
refuses a caller, with GCS's own error body, and allows what GCS allows."""

from __future__ import annotations

import json
from collections.abc import Mapping

import pytest
import requests

from kgg.common import gcs_front
from tests.iam import Stack

B = "kgg-test-bucket"


def _call(
    url: str,
    method: str,
    path: str,
    token: str | None,
    *,
    json: Mapping[str, str] | None = None,
    data: bytes | None = None,
) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.request(method, url + path, headers=headers, timeout=30, json=json, data=data)


@pytest.mark.parametrize(
    ("method", "path", "permission", "noun"),
    [
        ("GET", f"/storage/v1/b/{B}", "storage.buckets.get", "bucket"),
        ("GET", f"/storage/v1/b/{B}/iam", "storage.buckets.getIamPolicy", "bucket"),
        ("DELETE", f"/storage/v1/b/{B}", "storage.buckets.delete", "bucket"),
        ("PATCH", f"/storage/v1/b/{B}", "storage.buckets.update", "bucket"),
    ],
)
def test_the_vm_is_refused_what_objectadmin_lacks_with_gcs_403_body(
    gcs_bucket: str, gcs_emulator: str, iam_stack: Stack, method: str, path: str, permission: str,
    noun: str,
) -> None:  # fmt: skip
    answer = _call(gcs_emulator, method, path, iam_stack.vm_token, json={})

    assert answer.status_code == 403
    message = (
        f"{iam_stack.vm_email} does not have {permission} access to the Google Cloud Storage "
        f"{noun}. Permission '{permission}' denied on resource (or it may not exist)."
    )
    assert answer.json() == {"error": {"code": 403, "message": message, "errors": [
        {"message": message, "domain": "global", "reason": "forbidden"}]}}  # fmt: skip


def test_the_vm_may_write_read_list_overwrite_and_delete_objects(
    gcs_bucket: str, gcs_emulator: str, iam_stack: Stack
) -> None:
    upload = f"/upload/storage/v1/b/{B}/o?uploadType=media&name=runs%2Fr%2Fa.txt"
    for data in (b"one", b"two"):  # the second replaces the first: needs objects.delete too
        assert _call(gcs_emulator, "POST", upload, iam_stack.vm_token, data=data).status_code == 200
    read = _call(gcs_emulator, "GET", f"/storage/v1/b/{B}/o/runs%2Fr%2Fa.txt?alt=media",
                 iam_stack.vm_token)  # fmt: skip
    assert read.content == b"two"
    listed = _call(gcs_emulator, "GET", f"/storage/v1/b/{B}/o", iam_stack.vm_token).json()
    assert [item["name"] for item in listed["items"]] == ["runs/r/a.txt"]
    deleted = _call(gcs_emulator, "DELETE", f"/storage/v1/b/{B}/o/runs%2Fr%2Fa.txt",
                    iam_stack.vm_token)  # fmt: skip
    assert deleted.ok  # GCS answers 204, the emulator 200


def test_an_anonymous_caller_gets_401_and_an_unknown_token_too(
    gcs_bucket: str, gcs_emulator: str
) -> None:
    for token in (None, "ya29.made-up"):
        answer = _call(gcs_emulator, "GET", f"/storage/v1/b/{B}/o", token)
        assert answer.status_code == 401
        assert answer.json()["error"]["message"].startswith(
            "Anonymous caller does not have storage.objects.list access"
        )


def test_a_missing_object_is_404_for_the_vm_and_a_missing_bucket_404_for_everyone(
    gcs_bucket: str, gcs_emulator: str, iam_stack: Stack
) -> None:
    missing = _call(
        gcs_emulator, "GET", f"/storage/v1/b/{B}/o/nothing?alt=media", iam_stack.vm_token
    )
    assert missing.status_code == 404
    no_bucket = _call(gcs_emulator, "GET", "/storage/v1/b/kgg-absent", iam_stack.vm_token)
    assert no_bucket.status_code == 404


def test_an_object_creator_cannot_overwrite() -> None:
    """Replacing an object needs storage.objects.delete as well (objectCreator lacks it)."""
    upload = f"/upload/storage/v1/b/{B}/o?uploadType=media&name=x"
    fresh = gcs_front.needs_of("POST", upload, {}, b"", lambda _b, _n: False)
    existing = gcs_front.needs_of("POST", upload, {}, b"", lambda _b, _n: True)
    assert [n.permission for n in fresh or []] == ["storage.objects.create"]
    assert [n.permission for n in existing or []] == [
        "storage.objects.create", "storage.objects.delete"]  # fmt: skip


def test_a_multipart_upload_is_checked_on_the_name_in_its_metadata() -> None:
    body = (b'--xyz\r\nContent-Type: application/json\r\n\r\n{"name": "runs/r/m.json"}\r\n'
            b"--xyz\r\nContent-Type: text/plain\r\n\r\ndata\r\n--xyz--")  # fmt: skip
    headers = {"Content-Type": 'multipart/related; boundary="xyz"'}
    (need,) = gcs_front.needs_of(
        "POST", f"/upload/storage/v1/b/{B}/o?uploadType=multipart", headers, body,
        lambda _b, _n: False,
    ) or []  # fmt: skip
    assert need.resource == f"projects/_/buckets/{B}/objects/runs/r/m.json"


def test_a_request_the_front_does_not_know_is_refused_loudly(
    gcs_emulator: str, iam_stack: Stack
) -> None:
    answer = _call(gcs_emulator, "POST", "/batch/storage/v1", iam_stack.owner_token, data=b"")
    assert answer.status_code == 501
    assert "does not know" in answer.text


def test_the_laptop_user_is_the_projects_owner(gcs_bucket: str, gcs_emulator: str,
                                               iam_stack: Stack) -> None:  # fmt: skip
    answer = _call(gcs_emulator, "GET", f"/storage/v1/b/{B}", iam_stack.owner_token)
    assert answer.status_code == 200
    assert json.loads(answer.content)["name"] == B
