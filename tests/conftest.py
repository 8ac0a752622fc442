"""Fixtures shared by every test folder."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.boot import phases
from workload.emulator import running_emulator

TEST_BUCKET = "kgg-test-bucket"
# The real-boot suite runs in one xdist worker; its phase timings reach the summary printed here
# through the test reports (user_properties travel from worker to controller).
BOOT_PHASES = "kgg_boot_phases"
_boot_report: dict[str, list] = {}


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[str]:
    """A GCS emulator on 127.0.0.1 with TEST_BUCKET, for the whole session; yields its URL."""
    with running_emulator(TEST_BUCKET) as url:
        yield url


@pytest.fixture
def gcs_bucket(gcs_emulator: str) -> Iterator[str]:
    """TEST_BUCKET emptied before the test, so tests do not see each other's objects."""
    _empty(TEST_BUCKET)
    yield TEST_BUCKET


def _empty(bucket: str) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project="local", credentials=AnonymousCredentials())
    for blob in client.list_blobs(bucket):
        blob.delete()


@pytest.fixture
def gcs_bucket_like_real_gcs(gcs_bucket: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """TEST_BUCKET, with the emulator storing object names that have `..` segments, as GCS does.

    gcp-storage-emulator refuses such names only because its store also maps names onto file
    paths; its in-memory store is a dict keyed by that path, so a normaliser that keeps `..`
    (and still drops empty and `.` segments, as the original does) is safe here. The names
    still travel through the real JSON API: upload, listing and download."""
    from gcp_storage_emulator.storage import _FileStore

    def keep_dot_dot(path: str) -> str:
        parts = path.replace("\\", "/").split("/")
        return "/".join(part for part in parts if part and part != ".")

    monkeypatch.setattr(_FileStore, "_norm", staticmethod(keep_dot_dot))
    yield gcs_bucket
    # While the normaliser still keeps `..`: the next test's clean-up could not delete them.
    _empty(gcs_bucket)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    report = yield
    if call.when == "teardown" and item.get_closest_marker("boot"):
        report.user_properties.append((BOOT_PHASES, phases.snapshot()))
    return report


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for key, value in report.user_properties:
        if key == BOOT_PHASES:
            _boot_report.update(value)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _boot_report.get("phases"):
        return
    terminalreporter.section("real-boot phases")
    for line in phases.summary(_boot_report):
        terminalreporter.write_line(line)
