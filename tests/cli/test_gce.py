"""The Compute client's own rules: pages, failed operations, the URLs it agrees to follow."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kgg.cli.gce import Compute, GceError, GroupRef

GROUP = GroupRef("kgg-demo-project", "us-central1", "kgg-dev-0a1b2c")


class Response:
    def __init__(self, body: dict[str, Any], status: int = 200) -> None:
        self.status_code = status
        self.content = json.dumps(body).encode()
        self.text = self.content.decode()

    def json(self) -> dict[str, Any]:
        return json.loads(self.content)


class Session:
    """Answers each call with the next canned body and remembers what was asked."""

    def __init__(self, *bodies: dict[str, Any]) -> None:
        self.bodies = list(bodies)
        self.calls: list[tuple[str, str, dict | None]] = []

    def request(self, method: str, url: str, params=None, timeout=None) -> Response:
        self.calls.append((method, url.rsplit("/", 1)[-1], params))
        return Response(self.bodies.pop(0))


def test_listings_follow_next_page_tokens():
    session = Session(
        {"items": [{"n": 1}], "nextPageToken": "t2"},
        {"items": [{"n": 2}]},
    )
    assert Compute(session).list_errors(GROUP) == [{"n": 1}, {"n": 2}]
    assert [call[2] for call in session.calls] == [None, {"pageToken": "t2"}]


def test_failed_resize_operation_raises_gces_error():
    failed = {
        "name": "op-1",
        "status": "DONE",
        "error": {"errors": [{"code": "QUOTA_EXCEEDED", "message": "Quota exceeded"}]},
    }
    with pytest.raises(GceError, match="resizing kgg-dev-0a1b2c to 1 failed: QUOTA_EXCEEDED"):
        Compute(Session(failed)).resize(GROUP, 1)


def test_resize_waits_on_the_operation_until_done():
    session = Session({"name": "op-1", "status": "RUNNING"}, {"name": "op-1", "status": "DONE"})
    assert Compute(session).resize(GROUP, 0)["status"] == "DONE"
    assert [call[:2] for call in session.calls] == [("POST", "resize"), ("POST", "wait")]


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example/steal",
        "https://www.googleapis.com/compute/v1/projects/p/zones/x/disks/d",
    ],
)
def test_only_template_urls_are_followed(url):
    with pytest.raises(GceError, match="unexpected template"):
        Compute(Session()).get_template(url)


def test_group_path_round_trips():
    path = "projects/kgg-demo-project/regions/us-central1/instanceGroupManagers/kgg-dev-0a1b2c"
    assert GroupRef.parse(path) == GROUP and GROUP.path == path
