"""A fake of the Compute Engine calls the laptop commands make, on 127.0.0.1.

It answers from request/response fixtures (tests/cli/fixtures/gce/<scenario>.json plus
common.json) and records every request, so a test asserts both what the CLI printed and exactly
which calls it made. The fixtures follow the shapes of GCE's REST reference
(regionInstanceGroupManagers get/resize/listManagedInstances/listErrors, regionOperations.wait,
instanceTemplates.get) and its error catalogue; they were written from those documents, not
captured from a live project (this machine has no GCP).

Every call is checked against IAM first, as GCE does: the caller is known by its bearer token
(the laptop user's default credentials; the VM's token in the tests that take it), the
permission is the one the Compute API reference documents for the method, and the grants are
the declared program's (tests/iam.py); a refusal is GCE's own 403 body.

Three things are live rather than replayed: a resize changes the `targetSize` later GETs of the
group return, listErrors timestamps are shifted so the newest is ERROR_AGE old, as if just
recorded (the status view ignores errors older than a day), and the VM's `hostkeys/` and `kgg/`
guest attributes are whatever a test sets (instances.getGuestAttributes; 404 while unset).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fake_cloud import compute_denial
from tests.iam import Stack, stack

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "gce"
GROUP_PATH = "projects/kgg-demo-project/regions/us-central1/instanceGroupManagers/kgg-dev-0a1b2c"
ERROR_AGE = timedelta(minutes=5)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]


@dataclass
class FakeCompute:
    scenario: str
    url: str = ""
    requests: list[Request] = field(default_factory=list)
    target_size: int | None = None
    # The VM's `hostkeys/` and `kgg/` guest attributes (live; None: nothing published, GCE
    # answers 404).
    host_keys: list[dict[str, str]] | None = None
    notebook_attributes: list[dict[str, str]] | None = None
    # The running VM's instance id, when a test has the group recreate it (live; None: the
    # fixture's).
    instance_id: str | None = None
    stack: Stack = field(default_factory=lambda: stack("kgg-test-bucket"))
    # Each request's caller (member, or None without a known token), in order.
    callers: list[str | None] = field(default_factory=list)

    def exchanges(self) -> list[dict[str, Any]]:
        loaded = []
        for name in (self.scenario, "common"):
            loaded += json.loads((FIXTURES / f"{name}.json").read_text())["exchanges"]
        return loaded

    def answer(
        self, method: str, raw_path: str, authorization: str = ""
    ) -> tuple[int, dict[str, Any]]:
        split = urlsplit(raw_path)
        query = parse_qs(split.query)
        self.requests.append(Request(method, split.path, query))
        member = self.stack.authority.member(authorization.removeprefix("Bearer "))
        self.callers.append(member)
        permission, resource = required_permission(method, split.path)
        if member is None or not self.stack.authority.allows(member, permission, resource):
            return compute_denial(member, permission, resource)
        if split.path.endswith("/getGuestAttributes"):
            path = query["queryPath"][0]
            items = self.host_keys if path.startswith("hostkeys/") else self.notebook_attributes
            if items is not None:
                return 200, {
                    "kind": "compute#guestAttributes",
                    "queryPath": path,
                    "queryValue": {"items": items},
                }
        for exchange in self.exchanges():
            request = exchange["request"]
            if (request["method"], request["path"]) != (method, split.path):
                continue
            body = exchange["response"]["body"]
            if split.path.endswith("/resize"):
                self.target_size = int(query["size"][0])
            elif split.path.endswith(GROUP_PATH) and self.target_size is not None:
                body = {**body, "targetSize": self.target_size}
            elif split.path.endswith("/listErrors"):
                body = _shift_timestamps(body)
            elif split.path.endswith("/listManagedInstances") and self.instance_id is not None:
                managed = [{**vm, "id": self.instance_id} for vm in body["managedInstances"]]
                body = {**body, "managedInstances": managed}
            return exchange["response"]["status"], body
        message = f"The resource '{split.path}' was not found"
        return 404, {"error": {"code": 404, "message": message, "errors": []}}

    def calls(self) -> list[str]:
        """`METHOD path-after-the-group?query`: short enough to compare in a test."""
        calls = []
        for request in self.requests:
            path = request.path.removeprefix("/compute/v1/").replace(GROUP_PATH, "GROUP")
            query = "&".join(f"{key}={value[0]}" for key, value in sorted(request.query.items()))
            calls.append(f"{request.method} {path}" + (f"?{query}" if query else ""))
        return calls


def required_permission(method: str, path: str) -> tuple[str, str]:
    """The permission the Compute API reference documents for the call, and its resource."""
    resource = path.removeprefix("/compute/v1/")
    for suffix in ("/listManagedInstances", "/listErrors", "/listPerInstanceConfigs"):
        if resource.endswith(suffix):
            return "compute.instanceGroupManagers.get", resource.removesuffix(suffix)
    if resource.endswith("/resize"):
        return "compute.instanceGroupManagers.update", resource.removesuffix("/resize")
    if "/instanceGroupManagers/" in resource:
        return "compute.instanceGroupManagers.get", resource
    if "/instanceTemplates/" in resource:
        return "compute.instanceTemplates.get", resource
    if "/operations/" in resource:
        return "compute.regionOperations.get", resource.removesuffix("/wait")
    if resource.endswith("/aggregated/instances"):
        return "compute.instances.list", resource.removesuffix("/aggregated/instances")
    if resource.endswith("/getGuestAttributes"):
        return "compute.instances.getGuestAttributes", resource.removesuffix("/getGuestAttributes")
    if "/instances/" in resource and method == "DELETE":
        return "compute.instances.delete", resource
    return f"unknown {method} {resource}", resource


def _shift_timestamps(body: dict[str, Any]) -> dict[str, Any]:
    items = body.get("items") or []
    stamps = [datetime.fromisoformat(item["timestamp"]) for item in items]
    if not stamps:
        return body
    shift = datetime.now(UTC) - ERROR_AGE - max(stamps)
    moved = [
        {**item, "timestamp": (stamp + shift).isoformat()}
        for item, stamp in zip(items, stamps, strict=True)
    ]
    return {**body, "items": moved}


@contextmanager
def running_fake(scenario: str) -> Iterator[FakeCompute]:
    """The fake for `scenario`, served until the block ends; `.url` is the API's base URL."""
    fake = FakeCompute(scenario)

    class Handler(BaseHTTPRequestHandler):
        def _reply(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            status, body = fake.answer(
                self.command, self.path, self.headers.get("Authorization", "")
            )
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = _reply
        do_POST = _reply
        do_DELETE = _reply

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}/compute/v1/"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def fixture_body(scenario: str, method: str, path_end: str) -> dict[str, Any]:
    """The recorded response body of `scenario` (or common.json) for a request path ending in
    `path_end`, for the pure tests."""
    for name in (scenario, "common"):
        for exchange in json.loads((FIXTURES / f"{name}.json").read_text())["exchanges"]:
            request = exchange["request"]
            if request["method"] == method and request["path"].endswith(path_end):
                return exchange["response"]["body"]
    raise KeyError(f"{scenario}: no {method} ...{path_end}")
