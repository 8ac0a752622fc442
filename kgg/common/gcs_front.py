"""A loopback front before the GCS emulator that enforces IAM the way GCS does, so a test double
refuses what GCS refuses: it knows each caller by the bearer token of its request, maps every JSON
API request to the permission the API reference documents for its method
(https://cloud.google.com/storage/docs/json_api/v1, "Required permissions"), asks an `Authority`
whether the caller holds it on that bucket or object, and answers GCS's own 401/403 error body
when not. Allowed requests reach the emulator unchanged; its answers come back with their
`Location` (a resumable upload's session URI) pointing here.

A laptop caller's token comes from `credentials_file`: an `authorized_user` credentials file
holding an access token that has not expired, which google-auth's ordinary code path sends as
it is (a user's refresh token goes to Google's own token endpoint, which no test reaches).
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

BUCKET_RESOURCE = "projects/_/buckets/{bucket}"
OBJECT_RESOURCE = "projects/_/buckets/{bucket}/objects/{name}"
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "date",
              "server"}  # fmt: skip


class Authority(Protocol):
    """Who a bearer token belongs to, and what IAM lets them do (kgg/infra/access.py has one)."""

    def member(self, token: str | None) -> str | None: ...

    def allows(self, member: str, permission: str, resource: str) -> bool: ...


@dataclass(frozen=True)
class Need:
    """One permission a request needs, on a bucket or an object (`noun`, for the error text)."""

    permission: str
    resource: str
    noun: str


def bucket_need(permission: str, bucket: str) -> Need:
    return Need(permission, BUCKET_RESOURCE.format(bucket=bucket), "bucket")


def object_need(permission: str, bucket: str, name: str) -> Need:
    return Need(permission, OBJECT_RESOURCE.format(bucket=bucket, name=name), "object")


def _created(bucket: str, name: str, exists: Callable[[str, str], bool]) -> list[Need]:
    """Writing an object needs storage.objects.create, and storage.objects.delete as well when it
    replaces one (the reason roles/storage.objectCreator cannot overwrite)."""
    needs = [object_need("storage.objects.create", bucket, name)]
    if name and exists(bucket, name):
        needs.append(object_need("storage.objects.delete", bucket, name))
    return needs


def upload_name(query: dict[str, list[str]], headers: Any, body: bytes) -> str:
    """The object an upload writes: `name=` in the query, else the metadata part of a multipart
    body or a resumable upload's JSON metadata."""
    if query.get("name"):
        return query["name"][0]
    text = body.decode("utf-8", errors="replace")
    boundary = re.search(r'boundary="?([^";]+)"?', headers.get("Content-Type", "") or "")
    if boundary:
        parts = text.split("--" + boundary.group(1))
        text = parts[1].partition("\r\n\r\n")[2] if len(parts) > 1 else ""
    try:
        return str(json.loads(text.strip() or "{}").get("name") or "")
    except (ValueError, AttributeError):
        return ""


def needs_of(
    method: str, raw_path: str, headers: Any, body: bytes, exists: Callable[[str, str], bool]
) -> list[Need] | None:
    """The permissions a JSON API request needs; [] when its upload session authorizes it (the
    session URI is the credential); None for a request this front does not know."""
    split = urllib.parse.urlsplit(raw_path)
    query = urllib.parse.parse_qs(split.query)
    parts = [urllib.parse.unquote(part) for part in split.path.strip("/").split("/")]
    size = 2 if parts[:1] == ["storage"] else 3
    api, rest = "/".join(parts[:size]), parts[size:]
    if api == "upload/storage/v1" and rest[:1] == ["b"] and rest[2:] == ["o"]:
        if query.get("upload_id"):
            return []
        return _created(rest[1], upload_name(query, headers, body), exists)
    if api not in ("storage/v1", "download/storage/v1") or rest[:1] != ["b"]:
        return None
    if len(rest) == 1:
        return [Need(f"storage.buckets.{'create' if method == 'POST' else 'list'}",
                     f"projects/{(query.get('project') or ['_'])[0]}", "project")]  # fmt: skip
    bucket = rest[1]
    if len(rest) == 2:
        verb = {"GET": "get", "DELETE": "delete", "PATCH": "update", "PUT": "update"}.get(method)
        return [bucket_need(f"storage.buckets.{verb}", bucket)] if verb else None
    if rest[2:] == ["iam"]:
        verb = "getIamPolicy" if method == "GET" else "setIamPolicy"
        return [bucket_need(f"storage.buckets.{verb}", bucket)]
    if rest[2:] == ["o"] and method == "GET":
        return [bucket_need("storage.objects.list", bucket)]
    if rest[2:3] != ["o"] or len(rest) < 4:
        return None
    name = rest[3]
    if len(rest) == 4:
        verb = {"GET": "get", "DELETE": "delete", "PATCH": "update", "PUT": "update"}.get(method)
        return [object_need(f"storage.objects.{verb}", bucket, name)] if verb else None
    if rest[4:] == ["compose"] and method == "POST":
        sources = (json.loads(body or b"{}").get("sourceObjects")) or []
        reads = [object_need("storage.objects.get", bucket, s.get("name", "")) for s in sources]
        return reads + _created(bucket, name, exists)
    if len(rest) == 9 and rest[4] in ("rewriteTo", "copyTo") and method == "POST":
        return [object_need("storage.objects.get", bucket, name),
                *_created(rest[6], rest[8], exists)]  # fmt: skip
    return None


def denial(member: str | None, need: Need) -> tuple[int, bytes]:
    """GCS's own answer to a caller without the permission: 401 for an anonymous caller, 403
    naming the principal otherwise."""
    who = member.partition(":")[2] if member else "Anonymous caller"
    message = (
        f"{who} does not have {need.permission} access to the Google Cloud Storage {need.noun}. "
        f"Permission '{need.permission}' denied on resource (or it may not exist)."
    )
    code, reason = (401, "required") if member is None else (403, "forbidden")
    error = {"code": code, "message": message,
             "errors": [{"message": message, "domain": "global", "reason": reason}]}  # fmt: skip
    return code, json.dumps({"error": error}).encode()


class Front:
    """The front, listening on 127.0.0.1:`port` (0: any free port), forwarding to `upstream`."""

    def __init__(self, upstream: str, authority: Authority, port: int = 0) -> None:
        self.upstream = urllib.parse.urlsplit(upstream)
        self.authority = authority
        self.refusals: list[str] = []
        self._http = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self._http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}"
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    def __enter__(self) -> Front:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.shutdown()
        self._http.server_close()

    def forward(self, method: str, path: str, headers: Any, body: bytes) -> tuple[int, Any, bytes]:
        host = self.upstream.hostname or "127.0.0.1"
        connection = http.client.HTTPConnection(host, self.upstream.port, timeout=120)
        try:
            sent = {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}
            connection.request(method, path, body=body or None, headers=sent)
            response = connection.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            connection.close()

    def exists(self, bucket: str, name: str = "") -> bool:
        path = f"/storage/v1/b/{urllib.parse.quote(bucket, safe='')}"
        if name:
            path += f"/o/{urllib.parse.quote(name, safe='')}"
        return self.forward("GET", path, {}, b"")[0] == 200

    def answer(self, method: str, path: str, headers: Any, body: bytes) -> tuple[int, Any, bytes]:
        authorization = headers.get("Authorization") or ""
        token = (
            authorization.removeprefix("Bearer ") if authorization.startswith("Bearer ") else None
        )
        member = self.authority.member(token)
        needs = needs_of(method, path, headers, body, self.exists)
        if needs is None:
            message = f"the GCS front does not know {method} {path}; map it to its permission"
            return 501, [("Content-Type", "text/plain")], message.encode()
        for need in needs:
            if member is not None and self.authority.allows(member, need.permission, need.resource):
                continue
            bucket = need.resource.split("/")[3] if need.noun != "project" else ""
            if bucket and not self.exists(bucket):
                break  # GCS says a bucket does not exist to anyone: the emulator's 404
            self.refusals.append(f"{member or 'anonymous'}: {need.permission} {need.resource}")
            status, data = denial(member, need)
            return status, [("Content-Type", "application/json; charset=UTF-8")], data
        status, answer_headers, data = self.forward(method, path, headers, body)
        upstream = f"{self.upstream.scheme}://{self.upstream.netloc}"
        moved = [(k, v.replace(upstream, self.url) if k.lower() == "location" else v)
                 for k, v in answer_headers if k.lower() not in HOP_BY_HOP]  # fmt: skip
        return status, moved, data


def _handler(front: Front) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            status, headers, data = front.answer(self.command, self.path, self.headers, body)
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        def log_message(self, *args: Any) -> None:  # quiet: `refusals` says what was refused
            pass

    return Handler


def credentials_file(token: str) -> dict[str, str]:
    """An `authorized_user` credentials file (GOOGLE_APPLICATION_CREDENTIALS) holding `token`
    as an access token valid until 2099: google-auth's own code path for a user's credentials,
    which sends it without refreshing."""
    return {
        "type": "authorized_user",
        "client_id": "kgg-emulator.apps.googleusercontent.com",
        "client_secret": "not-a-secret",
        "refresh_token": "not-used",
        "token": token,
        "expiry": "2099-01-01T00:00:00Z",
    }
