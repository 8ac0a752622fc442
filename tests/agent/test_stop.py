"""The VM stopping itself inside its managed instance group: a last workspace sync, then the
stack's stop workflow (run by the fake as the program declares it, as its own account) resizes
the group to 0 (it deletes the VM). Never a power-off there: the group would make the VM again at
once and keep paying. The VM's own token may start that workflow and nothing of the group."""

from __future__ import annotations

import dataclasses
import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from kgg.agent.agent import Agent
from kgg.agent.boot import boot
from kgg.agent.stop import check_stop_path, stop_vm
from kgg.infra import access
from tests.agent.conftest import FakeSystem, uploaded_status
from tests.fake_cloud import FakeCloud
from tests.iam import REGION, Stack


def _grouped(agent: Agent, cloud: FakeCloud) -> Agent:
    """The agent of a VM in the test stack's group, its metadata server and APIs faked."""
    iam_stack = cloud.stack
    instance = dataclasses.replace(
        agent.instance, group=iam_stack.group, group_region=REGION, project=iam_stack.project,
        workspace_prefix="workspace/", stop_workflow=iam_stack.workflow.name,
    )  # fmt: skip
    endpoints = dataclasses.replace(
        agent.endpoints, workflows=cloud.environment()["KGG_WORKFLOWS_URL"]
    )
    metadata = dataclasses.replace(agent.metadata, url=cloud.environment()["KGG_METADATA_URL"])
    return dataclasses.replace(agent, instance=instance, endpoints=endpoints, metadata=metadata)


@pytest.fixture
def grouped(agent: Agent, iam_stack: Stack) -> Iterator[tuple[Agent, FakeCloud]]:
    with FakeCloud(stack=iam_stack) as cloud:
        yield _grouped(agent, cloud), cloud


def without_grant(iam_stack: Stack, role_suffix: str) -> Stack:
    """The stack with the bindings of one custom role removed (a grant that did not apply)."""
    grants = iam_stack.grants
    kept = tuple(b for b in grants.bindings if not b.role.endswith(role_suffix))
    changed = access.Grants(grants.project, kept, grants.custom_roles, grants.buckets,
                            grants.identities, grants.workflows)  # fmt: skip
    authority = access.Authority(changed, dict(iam_stack.authority.tokens))
    return dataclasses.replace(iam_stack, authority=authority)


def test_idle_vm_in_a_group_syncs_its_workspace_then_its_workflow_resizes_the_group_to_zero(
    grouped: tuple[Agent, FakeCloud], system: FakeSystem
) -> None:
    agent, cloud = grouped
    iam_stack = cloud.stack

    assert stop_vm(agent, "stopped: idle for 61 minutes", backoff=0)

    assert cloud.requested("/executions") == [
        f"POST /workflows/v1/{iam_stack.workflow.name}/executions",
        f"GET /workflows/v1/{iam_stack.workflow.name}/executions/e1",
    ]
    # The workflow's account resized the group; the VM's never called Compute Engine.
    resize = f"POST /compute/v1/{iam_stack.group_path}/resize?size=0"
    assert cloud.requested("/compute/") == [resize]
    assert cloud.group_sizes[iam_stack.group_path] == 0
    (execution,) = cloud.executions.values()
    assert execution["state"] == "SUCCEEDED"
    assert system.powered_off is None
    (sync,) = [call for call in system.calls if call[:1] == ["runuser"]]
    assert sync[:4] == ["runuser", "-u", "jupyter", "--"]
    assert sync[-4:] == ["workspace", "sync", "--deadline", "20"]
    status = uploaded_status(agent.instance.bucket)
    assert status["phase"] == "idle"
    assert status["steps"]["idle"]["detail"] == "stopped: idle for 61 minutes"
    assert status["error"] is None


def test_the_vms_own_token_cannot_touch_its_group_only_start_the_workflow(
    grouped: tuple[Agent, FakeCloud],
) -> None:
    """What a notebook user can do with the token from the metadata server."""
    agent, cloud = grouped
    token = agent.metadata.token()
    for method, path in (("GET", ""), ("POST", "/resize?size=0")):
        request = urllib.request.Request(
            f"{cloud.url}/compute/v1/{cloud.stack.group_path}{path}",
            data=b"" if method == "POST" else None,
            headers={"Authorization": f"Bearer {token}"},
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 403
        message = json.load(refused.value)["error"]["message"]
        assert message.startswith("Required 'compute.instanceGroupManagers.")
    assert cloud.group_sizes[cloud.stack.group_path] == 1


def test_a_refused_stop_keeps_the_vm_running_and_says_so_with_the_fix(
    agent: Agent, iam_stack: Stack, system: FakeSystem
) -> None:
    with FakeCloud(stack=without_grant(iam_stack, "_stop_invoke")) as cloud:
        grouped = _grouped(agent, cloud)

        assert not stop_vm(grouped, "stopped: idle for 61 minutes", backoff=0)

        assert len(cloud.requested("/executions")) == 3
        assert cloud.requested("/compute/") == []
    assert system.powered_off is None  # a power-off would only bring the VM back
    error = uploaded_status(agent.instance.bucket)["error"]
    assert error["step"] == "idle-stop"
    assert "403" in error["message"] and "workflows.executions.create" in error["message"]
    assert "kgg stop" in error["hint"]
    assert iam_stack.workflow.name in error["hint"]


def test_the_boot_checks_the_stop_path_without_stopping(grouped: tuple[Agent, FakeCloud]) -> None:
    agent, cloud = grouped

    detail = check_stop_path(agent)

    assert detail == f"stop path checked ({cloud.stack.workflow.name.rsplit('/', 1)[-1]})"
    assert cloud.requested("/compute/") == [f"GET /compute/v1/{cloud.stack.group_path}"]
    assert cloud.group_sizes[cloud.stack.group_path] == 1


@pytest.mark.parametrize(
    ("missing", "denied"),
    [("_stop_invoke", "workflows.executions.create"),
     ("_group_resize", "compute.instanceGroupManagers.get")],
)  # fmt: skip
def test_a_stop_path_that_is_not_authorized_fails_the_boot_loudly(
    agent: Agent, iam_stack: Stack, missing: str, denied: str
) -> None:
    """A grant whose condition does not match fails at boot, not at the first idle hour."""
    with FakeCloud(stack=without_grant(iam_stack, missing)) as cloud:
        grouped = _grouped(agent, cloud)

        assert boot(grouped) == 1

        assert cloud.group_sizes[iam_stack.group_path] == 1
    status = uploaded_status(agent.instance.bucket)
    assert status["phase"] == "failed"
    assert status["error"]["step"] == "idle"
    assert denied in status["error"]["message"]
    assert "kgg stop" in status["error"]["hint"]


def test_a_vm_made_on_its_own_powers_off(agent: Agent, system: FakeSystem) -> None:
    assert stop_vm(agent, "stopped: training ended")

    assert system.powered_off == "keras-gpu-gcp: stopped: training ended"
    assert [call for call in system.calls if call[:1] == ["runuser"]] == []  # no workspace
