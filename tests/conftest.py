"""Fixtures shared by every test folder."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from workload.emulator import running_emulator

TEST_BUCKET = "kgg-test-bucket"


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[str]:
    """A GCS emulator on 127.0.0.1 with TEST_BUCKET, for the whole session; yields its URL."""
    with running_emulator(TEST_BUCKET) as url:
        yield url


@pytest.fixture
def gcs_bucket(gcs_emulator: str) -> Iterator[str]:
    """TEST_BUCKET emptied before the test, so tests do not see each other's objects."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project="local", credentials=AnonymousCredentials())
    for blob in client.list_blobs(TEST_BUCKET):
        blob.delete()
    yield TEST_BUCKET
