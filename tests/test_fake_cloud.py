"""The VM's fake Google endpoints refuse what the real ones refuse the caller (tests/fake_cloud.py),
and the stop workflow they run is the program's own definition (tests/fake_workflows.py)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests import fake_workflows
from tests.fake_cloud import FakeCloud
from tests.iam import Stack


def _get(url: str, token: str | None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_only_the_vm_reads_its_secrets_with_secret_managers_own_refusal(iam_stack: Stack) -> None:
    with FakeCloud(stack=iam_stack) as cloud:
        cloud.put_secret(iam_stack.password_secret, "argon2:$argon2id$x")
        url = f"{cloud.url}/secrets/v1/{iam_stack.password_secret}/versions/latest:access"

        assert _get(url, iam_stack.vm_token)[0] == 200
        status, body = _get(url, iam_stack.stopper_token)
        assert status == 403
        assert body["error"] == {
            "code": 403, "status": "PERMISSION_DENIED",
            "message": "Permission 'secretmanager.versions.access' denied on resource "
            f"'{iam_stack.password_secret}/versions/latest' (or it may not exist).",
        }  # fmt: skip
        assert _get(url, None)[0] == 401


def test_the_metadata_server_gives_the_vms_account_and_token_as_gce_does(iam_stack: Stack) -> None:
    with FakeCloud(stack=iam_stack) as cloud:
        request = urllib.request.Request(
            f"{cloud.url}/computeMetadata/v1/instance/service-accounts/default/?recursive=true",
            headers={"Metadata-Flavor": "Google"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.headers["Metadata-Flavor"] == "Google"
            assert json.load(answer)["email"] == iam_stack.vm_email


def test_the_check_mode_of_the_declared_workflow_only_reads_the_group(iam_stack: Stack) -> None:
    calls = []

    def http(method: str, url: str, query: dict, oauth2: bool) -> tuple[int, dict]:
        calls.append((method, url, query, oauth2))
        return 200, {"name": "kgg-dev-0a1b2c"}

    outcome = fake_workflows.run(iam_stack.workflow.source, {"check": True}, http)

    assert (outcome.state, outcome.result) == ("SUCCEEDED", "kgg-dev-0a1b2c")
    group = f"https://compute.googleapis.com/compute/v1/{iam_stack.group_path}"
    assert calls == [("GET", group, {}, True)]
    calls.clear()
    assert (
        fake_workflows.run(iam_stack.workflow.source, {"check": False}, http).state == "SUCCEEDED"
    )
    assert calls == [("POST", f"{group}/resize", {"size": 0}, True)]


@pytest.mark.parametrize("argument", [{"check": "yes"}, {"other": 1}, {}])
def test_any_argument_but_check_true_means_stop_nothing_else(
    iam_stack: Stack, argument: dict
) -> None:
    seen: list[str] = []

    def call(method: str, url: str, query: dict[str, Any], oauth2: bool) -> tuple[int, Any]:
        seen.append(method)
        return 200, {"name": "g"}

    fake_workflows.run(iam_stack.workflow.source, argument, call)
    assert seen == ["POST"]


def test_a_failed_call_fails_the_execution_and_unknown_syntax_is_refused() -> None:
    source = "main:\n  steps:\n    - a:\n        call: http.get\n        args: {url: x}\n"
    failed = fake_workflows.run(source, None, lambda m, u, q, o: (403, {"error": {}}))
    assert failed.state == "FAILED" and failed.error and failed.error["code"] == 403
    with pytest.raises(fake_workflows.UnsupportedSyntax):
        fake_workflows.run(
            "main:\n  steps:\n    - a:\n        for: {}\n", None, lambda *a: (200, {})
        )
