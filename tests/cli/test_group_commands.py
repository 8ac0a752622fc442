"""`kgg start|stop|ssh|status` through the real entry point, against a fake of the Compute
Engine calls they make (tests/cli/fake_gce.py): what they print and exactly which calls."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kgg.cli import stack
from kgg.cli.gce import ENDPOINT_ENV
from kgg.common import storage

from .conftest import run_workload
from .fake_gce import GROUP_PATH, FakeCompute, running_fake

TEMPLATE_CALL = "GET projects/kgg-demo-project/global/instanceTemplates/kg-template-5f3c2a1"
LABELLED_CALL = (
    "GET projects/kgg-demo-project/aggregated/instances"
    "?filter=(labels.app = keras-gpu-gcp) (labels.stack = dev)"
)
READ_GROUP = [
    "GET GROUP",
    TEMPLATE_CALL,
    "POST GROUP/listManagedInstances",
    "GET GROUP/listErrors",
    "POST GROUP/listPerInstanceConfigs",
    LABELLED_CALL,
]
WAIT_CALL = (
    "POST projects/kgg-demo-project/regions/us-central1/operations/"
    "operation-1764237600000-62f1a0b3c4d5e-resize/wait"
)


@pytest.fixture
def fake_gce(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FakeCompute]:
    with running_fake(request.param) as fake:
        monkeypatch.setenv(ENDPOINT_ENV, fake.url)
        yield fake


def workload(command: str, *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_workload(command, "--group", GROUP_PATH, *argv, cwd=cwd)


@pytest.mark.parametrize("fake_gce", ["stopped"], indirect=True)
def test_start_resizes_a_stopped_group_to_one_and_says_where_the_vm_will_run(
    fake_gce: FakeCompute, tmp_path: Path
) -> None:
    result = workload("start", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert fake_gce.calls() == [*READ_GROUP, "POST GROUP/resize?size=1", WAIT_CALL, *READ_GROUP]
    assert "started: the group kgg-dev-0a1b2c creates the VM in whichever of " in result.stdout
    assert "us-central1 (a, b, c, f) has capacity" in result.stdout
    assert "VM:          being created in us-central1 (a, b, c, f)" in result.stdout


@pytest.mark.parametrize("fake_gce", ["running"], indirect=True)
def test_start_leaves_a_started_group_alone(fake_gce: FakeCompute, tmp_path: Path) -> None:
    result = workload("start", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert fake_gce.calls() == READ_GROUP  # no resize
    assert "already started" in result.stdout
    assert "kgg-dev-0a1b2c-7kq2 in us-central1-b, RUNNING" in result.stdout


@pytest.mark.parametrize("fake_gce", ["running"], indirect=True)
def test_stop_resizes_the_group_to_zero_so_nothing_recreates_the_vm(
    fake_gce: FakeCompute, tmp_path: Path
) -> None:
    result = workload("stop", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert fake_gce.calls() == [*READ_GROUP, "POST GROUP/resize?size=0", WAIT_CALL, *READ_GROUP]
    assert "stopping: the group kgg-dev-0a1b2c deletes its VM" in result.stdout
    assert "VM:          stopping: the group deletes kgg-dev-0a1b2c-7kq2" in result.stdout


@pytest.mark.parametrize("fake_gce", ["stopped"], indirect=True)
def test_stop_leaves_a_stopped_group_alone(fake_gce: FakeCompute, tmp_path: Path) -> None:
    result = workload("stop", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert fake_gce.calls() == READ_GROUP
    assert "already stopped" in result.stdout


@pytest.mark.parametrize("fake_gce", ["stockout"], indirect=True)
def test_status_tells_it_is_waiting_for_capacity_with_each_zones_last_error(
    fake_gce: FakeCompute, gcs_bucket: str, tmp_path: Path
) -> None:
    result = workload("status", "--bucket", gcs_bucket, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert fake_gce.calls() == READ_GROUP
    lines = result.stdout.splitlines()
    assert lines[0].startswith(
        "VM:          waiting for capacity: nvidia-tesla-t4 in us-central1 (a, b, c, f), since "
    )
    errors = {line.split()[0]: line.split()[1] for line in lines[2:5]}
    assert errors == {
        "us-central1-a": "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
        "us-central1-b": "ZONE_RESOURCE_POOL_EXHAUSTED",
        "us-central1-f": "ZONE_RESOURCE_POOL_EXHAUSTED",
    }
    # The bucket's view follows: the VM has not reported, since it does not exist yet.
    assert "The VM has not reported yet" in result.stdout
    assert "get-serial-port-output" not in result.stdout


@pytest.mark.parametrize("fake_gce", ["running"], indirect=True)
def test_status_hints_name_the_vm_gce_runs_not_the_one_the_bucket_remembers(
    fake_gce: FakeCompute, gcs_bucket: str, tmp_path: Path
) -> None:
    # The status document still names the VM before a preemption moved it to another zone.
    error = {"step": "driver", "message": "nvidia-smi: no devices found", "log_tail": ""}
    storage.write_json(
        f"gs://{gcs_bucket}/status/startup.json",
        {"version": 1, "phase": "failed", "steps": {}, "error": error,
         "instance": "kgg-dev-0a1b2c-old1", "zone": "us-central1-f"},
    )  # fmt: skip
    result = workload("status", "--bucket", gcs_bucket, cwd=tmp_path)
    assert result.returncode == 1  # something failed
    assert (
        "gcloud compute instances get-serial-port-output kgg-dev-0a1b2c-7kq2 --zone us-central1-b"
    ) in result.stdout
    assert "kgg-dev-0a1b2c-old1" not in result.stdout


# The VM's certificate, as it publishes it (guest attribute kgg/tls-sha256), and one of a server
# that a bucket writer runs to collect the password.
REAL_TLS = ":".join(["3A"] * 32)
PHISHING_TLS = ":".join(["66"] * 32)
STATIC_IP_URL = "https://34.118.20.7:8888"  # the template's natIP and kgg-notebook-port


def _phishing_status(bucket: str) -> None:
    """What anyone who may write the bucket (but lacks the password) can put there."""
    storage.write_json(
        f"gs://{bucket}/status/startup.json",
        {"version": 1, "phase": "training", "steps": {}, "training": "running", "run_id": "r1",
         "notebook_url": "https://evil.example:8888", "tls_sha256": PHISHING_TLS},
    )  # fmt: skip


@pytest.mark.parametrize("fake_gce", ["running"], indirect=True)
def test_status_vouches_only_for_the_notebook_gce_and_the_vm_name(
    fake_gce: FakeCompute, gcs_bucket: str, tmp_path: Path
) -> None:
    fake_gce.notebook_attributes = [{"namespace": "kgg", "key": "tls-sha256", "value": REAL_TLS}]
    _phishing_status(gcs_bucket)

    result = workload("status", "--bucket", gcs_bucket, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f"Notebook:    {STATIC_IP_URL}" in lines
    trusted = lines.index(f"TLS SHA-256: {REAL_TLS}")
    assert "accept the browser's warning" in lines[trusted + 1]
    assert result.stdout.count("accept the browser's warning") == 1
    warnings = [line for line in lines if line.startswith("WARNING:")]
    assert len(warnings) == 2
    assert "names the notebook https://evil.example:8888, but GCE says" in warnings[0]
    assert f"({PHISHING_TLS}) than the VM published" in warnings[1]
    assert not any("evil.example" in line for line in lines if not line.startswith("WARNING:"))
    assert (
        "GET projects/kgg-demo-project/zones/us-central1-b/instances/kgg-dev-0a1b2c-7kq2/"
        "getGuestAttributes?queryPath=kgg/" in fake_gce.calls()
    )


@pytest.mark.parametrize("fake_gce", ["running"], indirect=True)
def test_status_vouches_for_no_certificate_the_vm_has_not_published(
    fake_gce: FakeCompute, gcs_bucket: str, tmp_path: Path
) -> None:
    _phishing_status(gcs_bucket)  # the fake answers 404: nothing published yet

    result = workload("status", "--bucket", gcs_bucket, cwd=tmp_path)

    assert f"Notebook:    {STATIC_IP_URL}" in result.stdout
    assert "TLS SHA-256: not published by the VM (not yet): accept no certificate yet" in (
        result.stdout
    )
    assert PHISHING_TLS not in result.stdout.replace(f"({PHISHING_TLS})", "")
    assert "accept the browser's warning" not in result.stdout


def test_status_without_gces_view_marks_the_buckets_notebook_unchecked(
    gcs_bucket: str, tmp_path: Path
) -> None:
    _phishing_status(gcs_bucket)

    result = run_workload("status", "--bucket", gcs_bucket, cwd=tmp_path)  # no group, no stack

    assert result.returncode == 0, result.stderr
    assert "Notebook:    https://evil.example:8888" in result.stdout
    assert "UNCHECKED: from the bucket's status document" in result.stdout
    assert "accept the browser's warning" not in result.stdout


@pytest.mark.parametrize("fake_gce", ["forbidden"], indirect=True)
def test_status_still_shows_the_bucket_when_gce_refuses(
    fake_gce: FakeCompute, gcs_bucket: str, tmp_path: Path
) -> None:
    result = workload("status", "--bucket", gcs_bucket, cwd=tmp_path)
    assert result.returncode == 0
    assert "The VM has not reported yet" in result.stdout
    assert "(no VM view from GCE: GET " in result.stderr and "HTTP 403" in result.stderr


@pytest.mark.parametrize("fake_gce", ["forbidden"], indirect=True)
@pytest.mark.parametrize("command", ["start", "stop", "ssh"])
def test_refused_group_is_one_line_with_the_fix(
    fake_gce: FakeCompute, tmp_path: Path, command: str
) -> None:
    result = workload(command, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "HTTP 403: Required 'compute.instanceGroupManagers.get' permission" in result.stderr
    assert "roles/compute.instanceAdmin.v1" in result.stderr
    assert "gcloud auth application-default login" in result.stderr
    assert fake_gce.calls() == ["GET GROUP"]


@pytest.mark.parametrize("fake_gce", ["running"], indirect=True)
def test_ssh_builds_the_command_for_the_vm_where_gce_put_it(
    fake_gce: FakeCompute, tmp_path: Path
) -> None:
    result = workload("ssh", "--print", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "gcloud compute ssh kgg-dev-0a1b2c-7kq2 --zone us-central1-b "
        "--project kgg-demo-project --tunnel-through-iap"
    )
    remote = workload("ssh", "--print", "--", "nvidia-smi", "-L", cwd=tmp_path)
    assert remote.stdout.strip().endswith("--tunnel-through-iap -- nvidia-smi -L")


@pytest.mark.parametrize("fake_gce", ["stopped"], indirect=True)
def test_ssh_without_a_running_vm_says_how_to_start_it(
    fake_gce: FakeCompute, tmp_path: Path
) -> None:
    result = workload("ssh", "--print", cwd=tmp_path)
    assert result.returncode == 2
    assert "no running VM to reach (stopped)" in result.stderr
    assert "kgg start" in result.stderr


def test_group_path_that_is_not_one_is_refused_with_the_expected_form(tmp_path: Path) -> None:
    result = run_workload("stop", "--group", "kgg-dev-0a1b2c; rm -rf ~", cwd=tmp_path)
    assert result.returncode == 2
    assert "'kgg-dev-0a1b2c; rm -rf ~' is not a group path" in result.stderr
    assert "projects/PROJECT/regions/REGION/instanceGroupManagers/NAME" in result.stderr


def test_group_comes_from_the_stack_output_when_pulumi_is_there() -> None:
    def fake_run(argv, **_kwargs):
        assert argv == ["pulumi", "stack", "output", "instanceGroup"]
        return subprocess.CompletedProcess(argv, 0, stdout=GROUP_PATH + "\n", stderr="")

    assert stack.resolve_group(None, which=lambda _: "pulumi", run=fake_run) == GROUP_PATH


def test_missing_pulumi_cli_says_to_pass_group() -> None:
    with pytest.raises(stack.StackValueError, match="pulumi CLI is not installed; pass --group"):
        stack.resolve_group(None, which=lambda _: None)


@pytest.mark.parametrize("fake_gce", ["outside"], indirect=True)
def test_status_warns_of_a_vm_outside_the_group_and_of_group_overrides(
    fake_gce: FakeCompute, gcs_bucket: str, tmp_path: Path
) -> None:
    result = workload("status", "--bucket", gcs_bucket, cwd=tmp_path)

    lines = result.stdout.splitlines()
    assert lines[0] == (
        "WARNING: kgg-dev-0a1b2c-old1 in us-central1-b (RUNNING) has the stack's labels but is "
        "not in the group kgg-dev-0a1b2c: idle shutdown and `kgg stop` do not "
        "reach it. `kgg stop` deletes it."
    )
    assert lines[1].startswith(
        "WARNING: the group kgg-dev-0a1b2c has allInstancesConfig sets enable-oslogin, ssh-keys"
    )
    assert lines[2].startswith(
        "WARNING: the group kgg-dev-0a1b2c has per-instance configs for kgg-dev-0a1b2c-7kq2"
    )
    assert "kgg-dev-0a1b2c-7kq2 in us-central1-b, RUNNING" in result.stdout


@pytest.mark.parametrize("fake_gce", ["outside"], indirect=True)
def test_stop_deletes_a_vm_outside_the_group_too_and_says_so(
    fake_gce: FakeCompute, tmp_path: Path
) -> None:
    result = workload("stop", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    delete = "DELETE projects/kgg-demo-project/zones/us-central1-b/instances/kgg-dev-0a1b2c-old1"
    assert delete in fake_gce.calls()
    assert "POST GROUP/resize?size=0" in fake_gce.calls()
    assert (
        "deleted kgg-dev-0a1b2c-old1 in us-central1-b: it had the stack's labels but was outside "
        "the group kgg-dev-0a1b2c"
    ) in result.stdout


@pytest.mark.parametrize("fake_gce", ["running"], indirect=True)
def test_the_vms_token_is_refused_the_group_with_gces_own_403(
    fake_gce: FakeCompute, tmp_path: Path
) -> None:
    """What the VM's account could do with the laptop's commands: nothing of its group."""
    from kgg.common.emulator import acting_as

    with acting_as(fake_gce.stack.vm_token):
        result = workload("stop", cwd=tmp_path)

    assert result.returncode == 2
    assert (
        f"HTTP 403: Required 'compute.instanceGroupManagers.get' permission for '{GROUP_PATH}'"
    ) in result.stderr
    assert fake_gce.calls() == ["GET GROUP"]
    assert fake_gce.callers == [fake_gce.stack.grants.identities["vm"]]


@pytest.mark.parametrize("fake_gce", ["running"], indirect=True)
def test_hints_ssh_through_iap_in_the_groups_project(
    fake_gce: FakeCompute, gcs_bucket: str, tmp_path: Path
) -> None:
    error = {"step": "jupyter", "message": "jupyter exited", "log_tail": ""}
    storage.write_json(
        f"gs://{gcs_bucket}/status/startup.json",
        {"version": 1, "phase": "failed", "steps": {}, "error": error},
    )
    result = workload("status", "--bucket", gcs_bucket, cwd=tmp_path)
    assert (
        "$ gcloud compute ssh kgg-dev-0a1b2c-7kq2 --zone us-central1-b --tunnel-through-iap "
        "--project kgg-demo-project -- sudo journalctl -u kgg-jupyter.service"
    ) in result.stdout
