"""A local GCS emulator (gcp-storage-emulator) on 127.0.0.1 behind the IAM-enforcing front
(kgg/common/gcs_front.py), for the demo and the tests.

The google-cloud-storage client talks to the front when STORAGE_EMULATOR_HOST is set, with the
caller's default credentials (kgg/common/storage.py), so the code under test makes exactly the
calls it makes against real GCS, and is refused what real GCS would refuse its identity.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from kgg.common.gcs_front import Authority, Front, credentials_file

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
CREDENTIALS_ENV = "GOOGLE_APPLICATION_CREDENTIALS"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def _environment(name: str, value: str | None) -> Iterator[None]:
    previous = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


@contextlib.contextmanager
def running_emulator(bucket: str, authority: Authority, port: int | None = None) -> Iterator[str]:
    """Starts an in-memory emulator with `bucket` behind the front, points the storage client at
    the front, yields the front's URL. The previous STORAGE_EMULATOR_HOST is restored afterwards."""
    from gcp_storage_emulator.server import create_server

    upstream = free_port()
    server = create_server("127.0.0.1", upstream, in_memory=True, default_bucket=bucket)
    server.start()
    try:
        with (
            Front(f"http://127.0.0.1:{upstream}", authority, port or 0) as front,
            _environment(EMULATOR_ENV, front.url),
        ):
            yield front.url
    finally:
        server.stop()


@contextlib.contextmanager
def acting_as(token: str) -> Iterator[Path]:
    """Default credentials that send `token` (an authorized_user credentials file), for this
    block; the storage client is made anew for them. Yields the file."""
    from kgg.common import storage

    with tempfile.TemporaryDirectory(prefix="kgg-credentials-") as folder:
        path = Path(folder, "credentials.json")
        path.write_text(json.dumps(credentials_file(token)))
        storage.forget_client()
        try:
            with _environment(CREDENTIALS_ENV, str(path)):
                yield path
        finally:
            storage.forget_client()
