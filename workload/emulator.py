"""A local GCS emulator (gcp-storage-emulator) on 127.0.0.1, for the demo and the tests.

The google-cloud-storage client talks to it when STORAGE_EMULATOR_HOST is set, so the code under
test uses exactly the calls it makes against real GCS.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running_emulator(bucket: str, port: int | None = None) -> Iterator[str]:
    """Starts an in-memory emulator with `bucket`, points the storage client at it, yields its URL.

    The previous STORAGE_EMULATOR_HOST is restored afterwards."""
    from gcp_storage_emulator.server import create_server

    port = port or free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
    server.start()
    url = f"http://127.0.0.1:{port}"
    previous = os.environ.get(EMULATOR_ENV)
    os.environ[EMULATOR_ENV] = url
    try:
        yield url
    finally:
        server.stop()
        if previous is None:
            os.environ.pop(EMULATOR_ENV, None)
        else:
            os.environ[EMULATOR_ENV] = previous
