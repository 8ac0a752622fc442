"""The VM's one cloud client (kgg/common/vm_runtime.py), which bootstrap.py and the agent share:
its one retry rule against a local HTTP server, the metadata server's values and token, Secret
Manager's read, the upload budget and the log line."""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from kgg.common import vm_runtime
from kgg.common.vm_runtime import (
    CloudError,
    Endpoints,
    Metadata,
    UploadBudget,
    read_secret,
    request,
    with_retries,
)
from tests.loopback import serving

SECRET = "projects/123456789012/secrets/kgg-dev-0a1b2c-notify-webhook"


class Server:
    """Answers each request with the next of `answers` (then the last one again), and keeps
    what was asked."""

    def __init__(self, *answers: tuple[int, Any]) -> None:
        self.answers = list(answers)
        self.asked: list[tuple[str, str, str]] = []
        self.url = ""

    def __call__(self, method: str, path: str, auth: str, body: bytes) -> tuple[int, Any]:
        self.asked.append((method, path, auth))
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


@contextmanager
def server(*answers: tuple[int, Any]) -> Iterator[Server]:
    fake = Server(*answers)
    with serving(fake) as url:
        fake.url = url.rstrip("/")
        yield fake


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KGG_RETRY_BASE_SECONDS", "0")
    monkeypatch.delenv("KGG_RETRY_ATTEMPTS", raising=False)


def test_a_server_error_is_asked_again_until_it_answers() -> None:
    with server((503, "busy"), (503, "busy"), (200, "ok")) as fake:
        assert request(f"{fake.url}/x") == b'"ok"'
    assert len(fake.asked) == 3


FINAL = [(400, "Bad Request"), (401, "Unauthorized"), (403, "Forbidden"), (404, "Not Found")]


@pytest.mark.parametrize(("status", "reason"), FINAL)
def test_an_answer_that_will_not_change_is_asked_once(status: int, reason: str) -> None:
    with (
        server((status, {"error": "no grant"}), (200, "ok")) as fake,
        pytest.raises(CloudError) as failed,
    ):
        request(f"{fake.url}/x")

    host = fake.url.removeprefix("http://")
    assert str(failed.value) == f"{host}: HTTP {status} {reason} (after 1 attempt)"
    assert (failed.value.status, failed.value.body) == (status, '{"error": "no grant"}')
    assert len(fake.asked) == 1


def test_attempts_are_bounded_and_the_last_error_is_named() -> None:
    last = r"HTTP 503 Service Unavailable \(after 3 attempts\)$"
    with server((503, "busy")) as fake, pytest.raises(CloudError, match=last):
        request(f"{fake.url}/x", attempts=3)
    assert len(fake.asked) == 3


def test_the_attempts_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KGG_RETRY_ATTEMPTS", "2")
    with server((503, "busy")) as fake, pytest.raises(CloudError, match="after 2 attempts"):
        request(f"{fake.url}/x")
    assert len(fake.asked) == 2


def test_the_wait_doubles_from_the_base_after_each_failure() -> None:
    waits: list[float] = []

    def down() -> None:
        raise OSError("connection refused")

    with pytest.raises(CloudError, match=r"^the server: connection refused"):
        with_retries(down, "the server", attempts=5, base_seconds=2, sleep=waits.append)

    assert waits == [2, 4, 8, 16]


def test_an_error_outside_the_retried_kinds_is_not_asked_again() -> None:
    calls: list[int] = []

    def broken() -> None:
        calls.append(1)
        raise KeyError("bug")

    with pytest.raises(KeyError):
        with_retries(broken, "x", attempts=5, sleep=lambda seconds: None)
    assert calls == [1]


def test_a_urls_password_never_reaches_the_message() -> None:
    with server((500, "boom")) as fake:
        url = fake.url.replace("http://", "http://kgg:tok3n-canary@") + "/x"
        with pytest.raises(CloudError) as failed:
            request(url, attempts=1)
    assert "tok3n-canary" not in str(failed.value)
    assert str(failed.value).startswith(fake.url.removeprefix("http://"))


def test_metadata_values_tokens_and_missing_keys() -> None:
    def answer(method: str, path: str, auth: str, body: bytes) -> tuple[int, Any]:
        if path.endswith("/token"):
            return 200, {"access_token": "ya29.t", "expires_in": 3599}
        return 404, "no such key"

    with serving(answer) as url:
        metadata = Metadata(url.rstrip("/"))
        assert metadata.token() == "ya29.t"
        assert metadata.optional("instance/attributes/kgg-stop-workflow") == ""
        with pytest.raises(CloudError, match=r"HTTP 404 Not Found \(after 1 attempt\)"):
            metadata.attribute("kgg-bucket")


def test_a_token_answer_without_a_token_is_refused() -> None:
    with server((200, {"error": "nope"})) as fake, pytest.raises(CloudError, match="no access"):
        Metadata(fake.url).token()


def test_a_secret_is_read_with_the_vms_token_and_decoded() -> None:
    payload = base64.b64encode(b"https://hooks.slack.com/services/T/B/X\n").decode()

    def answer(method: str, path: str, auth: str, body: bytes) -> tuple[int, Any]:
        if path.endswith("/token"):
            return 200, {"access_token": "ya29.t"}
        assert (path, auth) == (f"/sm/{SECRET}/versions/latest:access", "Bearer ya29.t")
        return 200, {"payload": {"data": payload}}

    with serving(answer) as url:
        base = url.rstrip("/")
        endpoints = Endpoints(metadata=base, secret_manager=f"{base}/sm")
        value = read_secret(endpoints, Metadata(base), SECRET, "the webhook URL")

    assert value == "https://hooks.slack.com/services/T/B/X"


def test_a_secret_name_that_is_not_one_is_refused_before_any_call() -> None:
    endpoints = Endpoints(metadata="http://127.0.0.1:9", secret_manager="http://127.0.0.1:9")
    with pytest.raises(CloudError, match=r"'\.\./x' is not a secret name \(projects/P/secrets/S\)"):
        read_secret(endpoints, Metadata("http://127.0.0.1:9"), "../x", "the webhook URL")


def test_failed_uploads_spend_the_shared_budget_then_none_is_tried(tmp_path: Path) -> None:
    clock = [0.0]
    tries: list[int] = []

    def failing() -> None:
        tries.append(1)
        clock[0] += 25
        raise CloudError("bucket down")

    budget = UploadBudget(tmp_path / "status-upload-seconds", 60, clock=lambda: clock[0])

    assert [budget.upload("the status document", failing) for _ in range(4)] == [False] * 4

    assert len(tries) == 3  # 25, 50, 75 s: the third crosses 60, the fourth is never tried
    assert float((tmp_path / "status-upload-seconds").read_text()) == 75
    assert UploadBudget(tmp_path / "status-upload-seconds", 60).exhausted  # the agent's view


def test_a_successful_upload_costs_no_budget(tmp_path: Path) -> None:
    budget = UploadBudget(seconds=60)
    assert budget.upload("the status document", lambda: None)
    assert budget.spent == 0


def test_the_log_line_is_utc_tagged_and_goes_to_the_file(tmp_path: Path) -> None:
    log_file = tmp_path / "state/startup.log"
    vm_runtime.configure_logging(log_file)
    try:
        vm_runtime.log.info("step driver: done")
    finally:
        for handler in vm_runtime.log.handlers:
            handler.close()
        vm_runtime.log.handlers.clear()

    (line,) = log_file.read_text().splitlines()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ keras-gpu-gcp: step driver: done", line)
    assert logging.getLogger("keras-gpu-gcp") is vm_runtime.log
