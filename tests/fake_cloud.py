"""The Google endpoints the VM talks to, on one loopback HTTP server: the metadata server (with
the VM's service account and its token, as google-auth's Compute Engine credentials read them),
Secret Manager's `versions/latest:access`, GCS's JSON download and simple media upload, Compute
Engine's group get and resize, the Workflow Executions API (it runs the stop workflow the program
declares: tests/fake_workflows.py), and plain files (the uv wheel). Each answers like the real one
where the VM can tell (headers it requires, status codes); tests inject failures and read the
request log.

Every API call is checked against IAM: the caller is known by its bearer token, the permission
is the one the API reference documents for the method, and the grants are what the program
declares for the stack (tests/iam.py); a refusal is the API's own 401/403 body.

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

from kgg.common import gcs_front
from tests import fake_workflows
from tests.iam import Stack, stack

METADATA = "/computeMetadata/v1/"
SECRETS = "/secrets/v1/"
GCS_API = "/storage/v1/b/"
GCS_UPLOAD = "/upload/storage/v1/b/"
FILES = "/files/"
COMPUTE = "/compute/v1/"
WORKFLOWS = "/workflows/v1/"
COMPUTE_API = "https://compute.googleapis.com/compute/v1/"
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
JSON = "application/json"


def compute_denial(member: str | None, permission: str, resource: str) -> tuple[int, dict]:
    """Compute Engine's answer to a caller without the permission (or without a token)."""
    if member is None:
        message = "Request is missing required authentication credential."
        return 401, {"error": {"code": 401, "message": message, "status": "UNAUTHENTICATED"}}
    message = f"Required '{permission}' permission for '{resource}'"
    error = {"message": message, "domain": "global", "reason": "forbidden"}
    return 403, {"error": {"code": 403, "message": message, "errors": [error]}}


def google_denial(member: str | None, permission: str, resource: str) -> tuple[int, dict]:
    """The answer of Secret Manager and Workflow Executions (Google's AIP errors)."""
    if member is None:
        message = "Request is missing required authentication credential."
        return 401, {"error": {"code": 401, "message": message, "status": "UNAUTHENTICATED"}}
    message = f"Permission '{permission}' denied on resource '{resource}' (or it may not exist)."
    return 403, {"error": {"code": 403, "message": message, "status": "PERMISSION_DENIED"}}


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
    # The stack whose grants every call is checked against, and whose VM this is.
    stack: Stack = field(default_factory=lambda: stack("kgg-test-bucket"))
    # The groups' target sizes (the VM's own: 1) and the workflow executions, by name.
    group_sizes: dict[str, int] = field(default_factory=dict)
    executions: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.group_sizes.setdefault(self.stack.group_path, 1)
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
            "KGG_METADATA_URL": self.url + METADATA.rstrip("/"),
            "KGG_SECRET_MANAGER_URL": self.url + SECRETS.rstrip("/"),
            "KGG_GCS_API_URL": self.url + "/storage/v1",
            "KGG_GCS_UPLOAD_URL": self.url + "/upload/storage/v1",
            "KGG_WORKFLOWS_URL": self.url + WORKFLOWS.rstrip("/"),
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

    def answer(self, method: str, raw: str, headers: Any, body: bytes) -> tuple[int, bytes, str]:
        """(status, body, content type) for one request."""
        self.requests.append(f"{method} {raw}")
        parsed = urllib.parse.urlsplit(raw)
        path, query = urllib.parse.unquote(parsed.path), urllib.parse.parse_qs(parsed.query)
        rule = self._failure(raw)
        if rule is not None:
            time.sleep(rule.delay)
            return rule.status, b"injected failure\n", "text/plain"
        if path == "/" or path.startswith(METADATA):
            return self._metadata(method, path, headers, body)
        if path.startswith(FILES):
            data = self.files.get(path.removeprefix(FILES))
            return (200, data, "") if data is not None else (404, b"not found\n", "text/plain")
        authorization = headers.get("Authorization", "")
        token = authorization.removeprefix("Bearer ") if authorization.startswith("Bearer ") else ""
        member = self.stack.authority.member(token)
        if path.startswith(SECRETS) and path.endswith("/versions/latest:access"):
            return self._secret(path, member)
        if path.startswith(COMPUTE):
            return self._compute(method, path, query, member)
        if path.startswith(WORKFLOWS):
            return self._workflows(method, path, body, member)
        if path.startswith(("/storage/", "/upload/", "/download/")):
            return self._storage(method, raw, path, query, headers, body, member)
        return 404, b"not found\n", "text/plain"

    def _metadata(
        self, method: str, path: str, headers: Any, body: bytes
    ) -> tuple[int, bytes, str]:
        if headers.get("Metadata-Flavor") != "Google":
            return 403, b"Missing Metadata-Flavor:Google header.\n", "text/plain"
        if path == "/":  # google-auth's check that it runs on GCE
            return 200, b"computeMetadata/\n", "application/text"
        key = path.removeprefix(METADATA)
        attribute = key.removeprefix("instance/guest-attributes/")
        if method == "PUT" and attribute != key:
            self.guest_attributes[attribute] = body.decode()
            return 200, b"", "text/plain"
        if key in self.metadata:
            return 200, self.metadata[key].encode(), "application/text"
        if key == "project/project-id":
            return 200, self.stack.project.encode(), "application/text"
        email = self.stack.vm_email
        for account in ("default", email):
            prefix = f"instance/service-accounts/{account}/"
            if key == prefix:
                info = {"aliases": ["default"], "email": email, "scopes": SCOPES}
                return 200, json.dumps(info).encode(), JSON
            if key == prefix + "email":
                return 200, email.encode(), "application/text"
            if key == prefix + "token":
                token = {"access_token": self.stack.vm_token, "expires_in": 3599,
                         "token_type": "Bearer"}  # fmt: skip
                return 200, json.dumps(token).encode(), JSON
        return 404, b"not found\n", "text/html"

    def _secret(self, path: str, member: str | None) -> tuple[int, bytes, str]:
        version = path.removeprefix(SECRETS).removesuffix(":access")
        secret = version.removesuffix("/versions/latest")
        permission = "secretmanager.versions.access"
        if member is None or not self.stack.authority.allows(member, permission, version):
            status, answer = google_denial(member, permission, version)
            return status, json.dumps(answer).encode(), JSON
        if secret not in self.secrets:
            answer = {"error": {"code": 404, "message": f"Secret [{secret}] not found or has no "
                                "versions.", "status": "NOT_FOUND"}}  # fmt: skip
            return 404, json.dumps(answer).encode(), JSON
        data = base64.b64encode(self.secrets[secret].encode()).decode()
        answer = {"name": f"{secret}/versions/1", "payload": {"data": data}}
        return 200, json.dumps(answer).encode(), JSON

    def _compute(
        self, method: str, path: str, query: dict[str, list[str]], member: str | None
    ) -> tuple[int, bytes, str]:
        resource = path.removeprefix(COMPUTE).removesuffix("/resize")
        resize = method == "POST" and path.endswith("/resize")
        if not (resize or method == "GET") or "/instanceGroupManagers/" not in resource:
            return 404, b'{"error": {"code": 404, "message": "not found"}}', JSON
        permission = "compute.instanceGroupManagers." + ("update" if resize else "get")
        if member is None or not self.stack.authority.allows(member, permission, resource):
            status, answer = compute_denial(member, permission, resource)
            return status, json.dumps(answer).encode(), JSON
        if resource not in self.group_sizes:
            message = f"The resource '{resource}' was not found"
            return 404, json.dumps({"error": {"code": 404, "message": message}}).encode(), JSON
        name = resource.rsplit("/", 1)[-1]
        if resize:
            # regionInstanceGroupManagers.resize: an Operation (the group does the rest).
            self.group_sizes[resource] = int(query["size"][0])
            operation = {"kind": "compute#operation", "name": f"operation-resize-{name}",
                         "status": "RUNNING", "user": member.partition(":")[2]}  # fmt: skip
            return 200, json.dumps(operation).encode(), JSON
        group = {"kind": "compute#instanceGroupManager", "name": name,
                 "targetSize": self.group_sizes[resource]}  # fmt: skip
        return 200, json.dumps(group).encode(), JSON

    def _workflows(
        self, method: str, path: str, body: bytes, member: str | None
    ) -> tuple[int, bytes, str]:
        name = path.removeprefix(WORKFLOWS)
        create = method == "POST" and name.endswith("/executions")
        permission = "workflows.executions." + ("create" if create else "get")
        resource = name.removesuffix("/executions") if create else name
        if member is None or not self.stack.authority.allows(member, permission, resource):
            status, answer = google_denial(member, permission, resource)
            return status, json.dumps(answer).encode(), JSON
        if not create:
            execution = self.executions.get(name)
            if execution is None:
                answer = {"error": {"code": 404, "message": f"{name} not found",
                                    "status": "NOT_FOUND"}}  # fmt: skip
                return 404, json.dumps(answer).encode(), JSON
            return 200, json.dumps(execution).encode(), JSON
        workflow = next((w for w in self.stack.grants.workflows if w.name == resource), None)
        if workflow is None:
            answer = {"error": {"code": 404, "message": f"{resource} not found",
                                "status": "NOT_FOUND"}}  # fmt: skip
            return 404, json.dumps(answer).encode(), JSON
        argument = json.loads(json.loads(body or b"{}").get("argument") or "null")
        outcome = fake_workflows.run(workflow.source, argument, self._workflow_call(workflow))
        execution = {
            "name": f"{resource}/executions/e{len(self.executions) + 1}",
            "state": outcome.state,
            "argument": json.dumps(argument),
        }
        if outcome.state == "SUCCEEDED":
            execution["result"] = json.dumps(outcome.result)
        else:
            execution["error"] = {"payload": json.dumps(outcome.error), "context": "stop"}
        self.executions[execution["name"]] = execution
        # Workflows answers at once with the execution ACTIVE; a get shows how it ended.
        return 200, json.dumps({**execution, "state": "ACTIVE"}).encode(), JSON

    def _workflow_call(self, workflow: Any) -> fake_workflows.HttpCall:
        """The workflow's HTTP calls: to this fake's Compute Engine, as the workflow's account."""
        token = next(t for t, m in self.stack.authority.tokens.items() if m == workflow.member)

        def call(method: str, url: str, query: dict[str, Any], oauth2: bool) -> tuple[int, Any]:
            if not url.startswith(COMPUTE_API):
                raise fake_workflows.UnsupportedSyntax(f"a call outside Compute Engine: {url}")
            raw = COMPUTE + url.removeprefix(COMPUTE_API)
            if query:
                raw += "?" + urllib.parse.urlencode(query)
            headers = {"Authorization": f"Bearer {token}"} if oauth2 else {}
            status, data, _ = self.answer(method, raw, headers, b"")
            return status, json.loads(data) if data else None

        return call

    def _storage(
        self, method: str, raw: str, path: str, query: dict[str, list[str]], headers: Any,
        body: bytes, member: str | None,
    ) -> tuple[int, bytes, str]:  # fmt: skip
        needs = gcs_front.needs_of(
            method, raw, headers, body, lambda _b, name: name in self.objects
        )
        for need in needs or []:
            if member is None or not self.stack.authority.allows(
                member, need.permission, need.resource
            ):
                status, data = gcs_front.denial(member, need)
                return status, data, JSON
        if method == "GET" and path.startswith(GCS_API) and query.get("alt") == ["media"]:
            name = path.removeprefix(GCS_API).partition("/o/")[2]
            content = self.objects.get(name)
            if content is None:
                return 404, b"No such object\n", "text/plain"
            return 200, content, ""
        if (
            method == "POST"
            and path.startswith(GCS_UPLOAD)
            and query.get("uploadType") == ["media"]
        ):
            name = query["name"][0]
            self.objects[name] = body
            self.uploads.append(Upload(name, body, headers.get("Content-Type", "")))
            return 200, json.dumps({"name": name, "size": str(len(body))}).encode(), JSON
        return 404, b"not found\n", "text/plain"


def _handler(cloud: FakeCloud) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            status, data, content_type = cloud.answer(method, self.path, self.headers, body)
            self.send_response(status)
            if self.path == "/" or self.path.startswith(METADATA):
                self.send_header("Metadata-Flavor", "Google")  # google-auth checks it
            if content_type:
                self.send_header("Content-Type", content_type)
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
