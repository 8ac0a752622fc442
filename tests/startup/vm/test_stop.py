"""The VM stopping itself inside its managed instance group: a last workspace sync, then the
group resizes to 0 (it deletes the VM). Never a power-off there: the group would make the VM
again at once and keep paying."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator

import pytest

from startup.vm.agent import Agent
from startup.vm.stop import stop_vm
from tests.fake_cloud import FakeCloud
from tests.startup.vm.conftest import FakeSystem, uploaded_status

GROUP = "kgg-dev-1a2b3c"
RESIZE = (
    f"POST /compute/v1/projects/my-project/regions/us-central1/instanceGroupManagers/{GROUP}"
    "/resize?size=0"
)


@pytest.fixture
def grouped(agent: Agent) -> Iterator[tuple[Agent, FakeCloud]]:
    """The agent of a VM in a group, with the metadata server and Compute Engine faked."""
    cloud = FakeCloud(
        metadata={
            "instance/service-accounts/default/token": json.dumps({"access_token": "t"}),
        }
    )
    with cloud:
        instance = dataclasses.replace(
            agent.instance,
            group=GROUP,
            group_region="us-central1",
            project="my-project",
            workspace_prefix="workspace/",
        )
        endpoints = dataclasses.replace(
            agent.endpoints, compute=cloud.environment()["KGG_COMPUTE_URL"]
        )
        metadata = dataclasses.replace(agent.metadata, url=cloud.environment()["KGG_METADATA_URL"])
        yield (
            dataclasses.replace(agent, instance=instance, endpoints=endpoints, metadata=metadata),
            cloud,
        )


def test_idle_vm_in_a_group_syncs_its_workspace_then_resizes_the_group_to_zero(
    grouped: tuple[Agent, FakeCloud], system: FakeSystem
) -> None:
    agent, cloud = grouped

    assert stop_vm(agent, "stopped: idle for 61 minutes", backoff=0)

    assert cloud.requested("/resize") == [RESIZE]
    assert system.powered_off is None
    (sync,) = [call for call in system.calls if call[:1] == ["runuser"]]
    assert sync[:4] == ["runuser", "-u", "jupyter", "--"]
    assert sync[-4:] == ["workspace", "sync", "--deadline", "20"]
    status = uploaded_status(agent.instance.bucket)
    assert status["phase"] == "idle"
    assert status["steps"]["idle"]["detail"] == "stopped: idle for 61 minutes"
    assert status["error"] is None


def test_a_refused_resize_keeps_the_vm_running_and_says_so(
    grouped: tuple[Agent, FakeCloud], system: FakeSystem
) -> None:
    agent, cloud = grouped
    cloud.fail("/resize", status=403)

    assert not stop_vm(agent, "stopped: idle for 61 minutes", backoff=0)

    assert len(cloud.requested("/resize")) == 3
    assert system.powered_off is None  # a power-off would only bring the VM back
    error = uploaded_status(agent.instance.bucket)["error"]
    assert error["step"] == "idle-stop"
    assert "403" in error["message"]
    assert "python -m workload stop" in error["hint"]


def test_a_vm_made_on_its_own_powers_off(agent: Agent, system: FakeSystem) -> None:
    assert stop_vm(agent, "stopped: training ended")

    assert system.powered_off == "keras-gpu-gcp: stopped: training ended"
    assert [call for call in system.calls if call[:1] == ["runuser"]] == []  # no workspace
