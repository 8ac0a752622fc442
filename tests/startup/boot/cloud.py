"""GCS for a booted test machine: the GCS emulator in a process of its own (gcs_emulator.py), which
the suite puts behind the IAM-enforcing front (kgg/common/gcs_front.py), and a client for the tests.
The metadata server, Secret Manager and the workflow executions are tests/fake_cloud.py."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kgg.infra.stack_config import PROJECT_ROOT


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
            [sys.executable, "-m", "tests.startup.boot.gcs_emulator", str(port), bucket],
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


def storage_client(url: str, token: str) -> Any:
    """A google-cloud-storage client for the GCS front at `url`, sending `token`."""
    from google.cloud import storage
    from google.oauth2.credentials import Credentials

    return storage.Client(
        project="test", credentials=Credentials(token), client_options={"api_endpoint": url}
    )


def read_json(client: Any, bucket: str, name: str) -> dict[str, Any] | None:
    blob = client.bucket(bucket).blob(name)
    if not blob.exists():
        return None
    return json.loads(blob.download_as_bytes())
