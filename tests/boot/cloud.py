"""The parts of Google Cloud a booted test machine talks to, on loopback: the metadata server
(what infra/ sets, answered only with `Metadata-Flavor: Google`, as GCE does), Secret Manager
(the Jupyter password hash) and GCS (the GCS emulator in a process of its own, gcs_emulator.py)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from infra.stack_config import PROJECT_ROOT


class FakeApi:
    """A read-only HTTP API on loopback: `values` maps a path under `prefix` to its text; tests
    change it between boots. Requests without `required_header` get 403, as the real one does."""

    def __init__(
        self,
        address: str,
        port: int,
        prefix: str,
        values: Mapping[str, str],
        required_header: tuple[str, str | None],
    ) -> None:
        self.values = dict(values)
        self.url = f"http://{address}:{port}{prefix.rstrip('/')}"
        api = self
        header, expected = required_header

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                value = api.values.get(path.removeprefix(prefix))
                sent = self.headers.get(header)
                if sent is None or (expected is not None and sent != expected):
                    self._answer(403, f"missing header {header}\n")
                elif not path.startswith(prefix) or value is None:
                    self._answer(404, "not found\n")
                else:
                    self._answer(200, value)

            def _answer(self, code: int, text: str) -> None:
                body = text.encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:  # quiet: the machine's journal has it
                pass

        self._http = ThreadingHTTPServer((address, port), Handler)
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    def __enter__(self) -> FakeApi:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.shutdown()
        self._http.server_close()


def metadata_server(address: str, values: Mapping[str, str]) -> FakeApi:
    """GCE's metadata server for one VM (paths like `instance/attributes/kgg-bucket`), on port 80
    as `http://metadata.google.internal/` needs."""
    return FakeApi(address, 80, "/computeMetadata/v1/", values, ("Metadata-Flavor", "Google"))


def secret_manager(address: str, port: int) -> FakeApi:
    """Secret Manager's `versions/latest:access` for the secrets `put_secret` stores."""
    return FakeApi(address, port, "/v1/", {}, ("Authorization", None))


def put_secret(api: FakeApi, secret: str, value: str) -> None:
    data = base64.b64encode(value.encode()).decode()
    answer = {"name": f"{secret}/versions/1", "payload": {"data": data}}
    api.values[f"{secret}/versions/latest:access"] = json.dumps(answer)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def gcs_emulator(bucket: str, log: Path) -> Iterator[str]:
    """The GCS emulator with `bucket`, in its own process; yields its URL."""
    port = free_port()
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.boot.gcs_emulator", str(port), bucket],
            cwd=PROJECT_ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                    break
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the GCS emulator did not start: {log.read_text()}")
                time.sleep(0.2)
            yield f"http://127.0.0.1:{port}"
        finally:
            process.terminate()
            process.wait(timeout=10)


def storage_client(url: str) -> Any:
    """A google-cloud-storage client for the emulator at `url`."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(
        project="test",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": url},
    )


def read_json(client: Any, bucket: str, name: str) -> dict[str, Any] | None:
    blob = client.bucket(bucket).blob(name)
    if not blob.exists():
        return None
    return json.loads(blob.download_as_bytes())
