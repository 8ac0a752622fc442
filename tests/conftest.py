"""Fixtures shared by every test folder."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING

import pytest

from kgg.common.emulator import acting_as, running_emulator
from tests import iam
from tests.startup.boot import phases

if TYPE_CHECKING:
    from tests.fake_cloud import FakeCloud

TEST_BUCKET = "kgg-test-bucket"
# The real-boot suite runs in one xdist worker; its phase timings reach the summary printed here
# through the test reports (user_properties travel from worker to controller).
BOOT_PHASES = "kgg_boot_phases"
_boot_report: dict[str, list] = {}


@pytest.fixture(scope="session")
def iam_stack() -> iam.Stack:
    """The stack the IAM-enforcing doubles serve: the program declared for TEST_BUCKET."""
    return iam.stack(TEST_BUCKET)


@pytest.fixture(scope="session", autouse=True)
def laptop_user(iam_stack: iam.Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every test is the laptop user (the project's Owner, by default credentials that send its
    token) unless it takes the VM's identity (`as_vm`); a developer's own gcloud credentials
    never reach a test."""
    no_gcloud = tmp_path_factory.mktemp("no-gcloud")
    with pytest.MonkeyPatch.context() as patch, acting_as(iam_stack.owner_token):
        patch.setenv("CLOUDSDK_CONFIG", str(no_gcloud))
        yield


@pytest.fixture(scope="session")
def gcs_emulator(iam_stack: iam.Stack) -> Iterator[str]:
    """A GCS emulator on 127.0.0.1 with TEST_BUCKET behind the IAM-enforcing front, for the whole
    session; yields the front's URL."""
    with running_emulator(TEST_BUCKET, iam_stack.authority) as url:
        yield url


@pytest.fixture
def as_vm(gcs_emulator: str, iam_stack: iam.Stack, tmp_path_factory: pytest.TempPathFactory,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCloud]:  # fmt: skip
    """This process takes the VM's identity, as on GCE: no credentials file, and google-auth's
    Compute Engine credentials from the (fake) metadata server, which hands out the VM's token.
    Yields that metadata server."""
    import google.auth.compute_engine._metadata as gce_metadata

    from kgg.common import storage
    from tests.fake_cloud import FakeCloud

    with FakeCloud(stack=iam_stack) as cloud:
        host = cloud.url.removeprefix("http://")
        monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
        monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path_factory.mktemp("no-gcloud")))
        monkeypatch.setenv("GCE_METADATA_IP", host)
        monkeypatch.setenv("GCE_METADATA_HOST", host)
        # google-auth reads the host once, at import.
        monkeypatch.setattr(gce_metadata, "_GCE_METADATA_HOST", host)
        storage.forget_client()
        yield cloud
        storage.forget_client()


@pytest.fixture
def gcs_bucket(gcs_emulator: str) -> Iterator[str]:
    """TEST_BUCKET emptied before the test, so tests do not see each other's objects."""
    _empty(TEST_BUCKET)
    yield TEST_BUCKET


def _empty(bucket: str) -> None:
    client = iam.client_with(iam.stack(TEST_BUCKET).owner_token)
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
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if call.when == "teardown" and item.get_closest_marker("boot"):
        report.user_properties.append((BOOT_PHASES, phases.snapshot()))
    return report


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    for key, value in report.user_properties:
        if key == BOOT_PHASES:
            assert isinstance(value, dict)  # phases.snapshot()'s, carried by the report
            _boot_report.update(value)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _boot_report.get("phases"):
        return
    terminalreporter.section("real-boot phases")
    for line in phases.summary(_boot_report):
        terminalreporter.write_line(line)
