"""The Google endpoints the VM talks to, on one loopback HTTP server: the metadata server, Secret
Manager's `versions/latest:access`, GCS's JSON download and simple media upload, Compute Engine's
group resize, and plain files (the uv wheel). Each answers like the real one where the VM can
tell (headers it requires, status codes); tests inject failures and read the request log.

The startup script reaches it through its KGG_* endpoint seams (`FakeCloud.environment()`); the
real-boot suite serves the metadata server on port 80 of a loopback address of its own.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

METADATA = "/computeMetadata/v1/"
SECRETS = "/secrets/v1/"
GCS_API = "/storage/v1/b/"
GCS_UPLOAD = "/upload/storage/v1/b/"
FILES = "/files/"
COMPUTE = "/compute/v1/"


@dataclass
class Rule:
    """Requests whose path contains `fragment` fail with `status` while `times` lasts (None:
    always), after `delay` seconds."""

    fragment: str
    times: int | None
    status: int
    delay: float


@dataclass
class Upload:
    name: str
    data: bytes
    content_type: str


@dataclass
class FakeCloud:
    address: str = "127.0.0.1"
    port: int = 0
    metadata: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)
    objects: dict[str, bytes] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    uploads: list[Upload] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)
    # What the VM wrote with PUT .../instance/guest-attributes/NAMESPACE/KEY.
    guest_attributes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._http = ThreadingHTTPServer((self.address, self.port), _handler(self))
        self.port = self._http.server_address[1]
        self.url = f"http://{self.address}:{self.port}"
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    def __enter__(self) -> FakeCloud:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.shutdown()
        self._http.server_close()

    # --- what the tests set ---------------------------------------------------------------
    def environment(self) -> dict[str, str]:
        """The startup script's endpoint seams, pointed here."""
        return {
            "KGG_COMPUTE_URL": self.url + COMPUTE.rstrip("/"),
            "KGG_METADATA_URL": self.url + METADATA.rstrip("/"),
            "KGG_SECRET_MANAGER_URL": self.url + SECRETS.rstrip("/"),
            "KGG_GCS_API_URL": self.url + "/storage/v1",
            "KGG_GCS_UPLOAD_URL": self.url + "/upload/storage/v1",
        }

    def file_url(self, name: str) -> str:
        return f"{self.url}{FILES}{name}"

    def put_secret(self, secret: str, value: str) -> None:
        self.secrets[secret] = value

    def fail(
        self, fragment: str, times: int | None = None, status: int = 503, delay: float = 0.0
    ) -> None:
        self.rules.append(Rule(fragment, times, status, delay))

    def heal(self) -> None:
        self.rules.clear()

    # --- what the tests read --------------------------------------------------------------
    def object_json(self, name: str) -> Any:
        return json.loads(self.objects[name])

    def uploads_of(self, name: str) -> Iterator[Any]:
        return (json.loads(u.data) for u in self.uploads if u.name == name)

    def requested(self, fragment: str) -> list[str]:
        return [request for request in self.requests if fragment in request]

    # --- serving ----------------------------------------------------------------------------
    def _failure(self, path: str) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.fragment in path and (rule.times is None or rule.times > 0):
                    if rule.times is not None:
                        rule.times -= 1
                    return rule
        return None

    def answer(self, method: str, raw: str, headers: Any, body: bytes) -> tuple[int, bytes]:
        self.requests.append(f"{method} {raw}")
        parsed = urllib.parse.urlsplit(raw)
        path, query = urllib.parse.unquote(parsed.path), urllib.parse.parse_qs(parsed.query)
        rule = self._failure(raw)
        if rule is not None:
            time.sleep(rule.delay)
            return rule.status, b"injected failure\n"
        if path.startswith(METADATA):
            if headers.get("Metadata-Flavor") != "Google":
                return 403, b"Missing Metadata-Flavor:Google header.\n"
            attribute = path.removeprefix(f"{METADATA}instance/guest-attributes/")
            if method == "PUT" and attribute != path:
                self.guest_attributes[attribute] = body.decode()
                return 200, b""
            value = self.metadata.get(path.removeprefix(METADATA))
            return (200, value.encode()) if value is not None else (404, b"not found\n")
        if path.startswith(FILES):
            data = self.files.get(path.removeprefix(FILES))
            return (200, data) if data is not None else (404, b"not found\n")
        if not headers.get("Authorization", "").startswith("Bearer "):
            return 401, b"missing credentials\n"
        if path.startswith(SECRETS) and path.endswith("/versions/latest:access"):
            secret = path.removeprefix(SECRETS).removesuffix("/versions/latest:access")
            if secret not in self.secrets:
                return 403, b"Permission denied on the secret\n"
            data = base64.b64encode(self.secrets[secret].encode()).decode()
            return 200, json.dumps(
                {"name": f"{secret}/versions/1", "payload": {"data": data}}
            ).encode()
        if method == "POST" and path.startswith(COMPUTE) and path.endswith("/resize"):
            # regionInstanceGroupManagers.resize: an Operation (the group does the rest).
            return 200, json.dumps({"kind": "compute#operation", "status": "RUNNING"}).encode()
        if method == "GET" and path.startswith(GCS_API) and query.get("alt") == ["media"]:
            name = path.removeprefix(GCS_API).partition("/o/")[2]
            data = self.objects.get(name)
            return (200, data) if data is not None else (404, b"No such object\n")
        if (
            method == "POST"
            and path.startswith(GCS_UPLOAD)
            and query.get("uploadType") == ["media"]
        ):
            name = query["name"][0]
            self.objects[name] = body
            self.uploads.append(Upload(name, body, headers.get("Content-Type", "")))
            return 200, json.dumps({"name": name, "size": str(len(body))}).encode()
        return 404, b"not found\n"


def _handler(cloud: FakeCloud) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            status, data = cloud.answer(method, self.path, self.headers, body)
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_PUT(self) -> None:
            self._serve("PUT")

        def log_message(self, *args: Any) -> None:  # quiet; the tests read `requests`
            pass

    return Handler
