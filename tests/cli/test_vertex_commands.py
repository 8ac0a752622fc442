"""`kgg submit`, `kgg sweep` and `kgg cancel` through the real parser: `--dry-run` prints exactly
the body the API takes (checked against Google's discovery document), and without it the body
goes to the Vertex AI fake (tests/fake_aiplatform.py), which refuses what the API refuses and
checks IAM with the stack's declared grants."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator

import pytest

from kgg.cli import main, vertex_jobs, vertex_spec
from kgg.cli.vertex_api import ENDPOINT_ENV
from kgg.common import storage
from kgg.startup import render
from tests import fake_aiplatform as vertex
from tests import iam

# What the container's entry needs: `kgg` importable from the extracted app, and the VM's uv and
# Python pins, so bootstrap.py `vertex` installs the env as a VM does.
CONTAINER_ENV = [
    {"name": "PYTHONUNBUFFERED", "value": "1"},
    {"name": "PYTHONPATH", "value": "/opt/kgg/app"},
    {"name": "KGG_UV_VERSION", "value": render.UV_VERSION},
    {"name": "KGG_UV_WHEEL_URL", "value": render.UV_WHEEL_URL},
    {"name": "KGG_UV_WHEEL_SHA256", "value": render.UV_WHEEL_SHA256},
    {"name": "KGG_PYTHON_MIN", "value": render.PYTHON_MIN},
    {"name": "KGG_PYTHON_MAX", "value": render.PYTHON_MAX},
    {"name": "KGG_MANAGED_PYTHON", "value": render.MANAGED_PYTHON},
]
JOBS_ACCOUNT = "kgg-dev-jobs@kgg-demo-project.iam.gserviceaccount.com"
TARGET = [
    "--project", "kgg-demo-project", "--region", "us-central1", "--bucket", "kgg-test-bucket",
    "--service-account", JOBS_ACCOUNT, "--stack", "dev",
]  # fmt: skip


def kgg(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main.run(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def fake_vertex(gcs_bucket: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[vertex.FakeVertex]:
    """The fake on 127.0.0.1 with the declared stack's grants (the laptop user is the Owner);
    the GCS emulator holds the bucket the code archive goes to."""
    with vertex.running_fake(iam.stack(gcs_bucket).authority) as fake:
        monkeypatch.setenv(ENDPOINT_ENV, fake.url)
        yield fake


def test_submit_dry_run_prints_the_custom_job_the_api_takes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = kgg(
        capsys, "submit", *TARGET, "--run-id", "vx-1", "--dry-run",
        "--recipe", "guide", "--finetune-lr", "0.001", "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    body = json.loads(out)
    assert vertex.validate("CustomJob", body) == []
    assert body["displayName"] == "kgg-dev-vx-1"
    assert body["labels"] == {"app": "keras-gpu-gcp", "stack": "dev", "run": "vx-1",
                              "kind": "submit"}  # fmt: skip
    spec = body["jobSpec"]
    assert spec["serviceAccount"] == JOBS_ACCOUNT
    assert spec["baseOutputDirectory"] == {"outputUriPrefix": "gs://kgg-test-bucket/runs/vx-1/"}
    (pool,) = spec["workerPoolSpecs"]
    t4 = {"machineType": "n1-highmem-4", "acceleratorType": "NVIDIA_TESLA_T4"}
    assert pool["machineSpec"] == t4 | {"acceleratorCount": 1}
    archive = vertex_jobs.code_archive()
    args = pool["containerSpec"]["args"]
    assert args[:4] == [f"/gcs/kgg-test-bucket/{archive.object_name}", archive.sha256,
                        "/opt/kgg/app", "kgg/startup/bootstrap.py"]  # fmt: skip
    assert args[4:] == [
        "vertex", "--", "train", "--data", "gs://kgg-test-bucket/data/plant-seedlings",
        "--recipe=guide", "--finetune-lr=0.001", "--no-progress",
        "--out=gs://kgg-test-bucket/runs/vx-1",
    ]  # fmt: skip
    assert pool["containerSpec"]["env"] == CONTAINER_ENV
    assert spec["scheduling"] == {"strategy": "STANDARD", "timeout": "86400s"}


def test_the_train_options_are_checked_by_the_jobs_own_parser(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main.run(["submit", *TARGET, "--dry-run", "--recipe", "slow"])
    assert exited.value.code == 2
    assert "invalid choice: 'slow'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "machine", "scheduling"),
    [
        (["--gpu-type", "nvidia-l4"], {"machineType": "g2-standard-4",
         "acceleratorType": "NVIDIA_L4", "acceleratorCount": 1}, None),
        (["--gpu-count", "2", "--scheduling", "spot"], {"machineType": "n1-highmem-4",
         "acceleratorType": "NVIDIA_TESLA_T4", "acceleratorCount": 2},
         {"strategy": "SPOT", "timeout": "86400s"}),
        (["--scheduling", "flex-start", "--max-wait", "2h", "--timeout", "6h"],
         {"machineType": "g2-standard-4", "acceleratorType": "NVIDIA_L4", "acceleratorCount": 1},
         {"strategy": "FLEX_START", "timeout": "21600s", "maxWaitDuration": "7200s"}),
    ],
)  # fmt: skip
def test_machine_and_scheduling_follow_the_catalogue_and_the_flags(
    capsys: pytest.CaptureFixture[str], argv: list[str], machine: dict | None,
    scheduling: dict | None,
) -> None:  # fmt: skip
    code, out, err = kgg(capsys, "submit", *TARGET, "--dry-run", *argv)
    assert code == 0, err
    body = json.loads(out)
    assert vertex.validate("CustomJob", body) == []
    if machine is not None:
        assert body["jobSpec"]["workerPoolSpecs"][0]["machineSpec"] == machine
    if scheduling is not None:
        assert body["jobSpec"]["scheduling"] == scheduling


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--gpu-type", "nvidia-tesla-k80"], "--gpu-type 'nvidia-tesla-k80' is not one of"),
        (["--gpu-count", "3"], "--gpu-count 3: nvidia-tesla-t4 comes in 1, 2, 4 per machine"),
        (["--gpu-type", "nvidia-l4", "--machine-type", "n1-highmem-4"],
         "--machine-type n1-highmem-4 does not take nvidia-l4; use g2-standard-12, g2-standard-16"),
        (["--max-wait", "2h"], "--max-wait applies to --scheduling flex-start only"),
        (["--scheduling", "flex-start", "--gpu-type", "nvidia-tesla-t4"],
         "--scheduling flex-start takes only nvidia-a100-80gb, "),
        (["--scheduling", "flex-start", "--max-wait", "soon"],
         "--max-wait 'soon' is not a duration like 30m, 2h or 1d"),
    ],
)  # fmt: skip
def test_a_bad_machine_or_schedule_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = kgg(capsys, "submit", *TARGET, "--dry-run", *argv)
    assert (code, out) == (2, "")
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_sweep_dry_run_prints_the_tuning_job_the_api_takes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = kgg(
        capsys, "sweep", *TARGET, "--run-id", "vs-1", "--dry-run", "--trials", "6",
        "--parallel", "2", "--param", "finetune-lr=log:1e-5..1e-2",
        "--param", "recipe=cat:fast,guide", "--algorithm", "random", "--batch-size", "16",
    )  # fmt: skip
    assert code == 0, err
    body = json.loads(out)
    assert vertex.validate("HyperparameterTuningJob", body) == []
    assert (body["maxTrialCount"], body["parallelTrialCount"]) == (6, 2)
    assert body["labels"]["kind"] == "sweep"
    study = body["studySpec"]
    assert study["algorithm"] == "RANDOM_SEARCH"
    assert [p["parameterId"] for p in study["parameters"]] == ["finetune-lr", "recipe"]
    container = body["trialJobSpec"]["workerPoolSpecs"][0]["containerSpec"]
    assert container["env"] == CONTAINER_ENV
    args = container["args"]
    # No --out: each trial's folder comes from AIP_MODEL_DIR (<base>/<trial-id>/model/).
    assert args[-2:] == ["gs://kgg-test-bucket/data/plant-seedlings", "--batch-size=16"]
    prefix = body["trialJobSpec"]["baseOutputDirectory"]["outputUriPrefix"]
    assert prefix == "gs://kgg-test-bucket/runs/vs-1/"


def test_a_swept_option_also_fixed_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = kgg(capsys, "sweep", *TARGET, "--dry-run", "--trials", "2",
                       "--param", "head-lr=1e-4..1e-2", "--head-lr", "0.01")  # fmt: skip
    assert code == 2
    assert "--head-lr is both fixed (in the train options) and swept" in err


def test_without_a_stack_each_missing_value_names_its_flag() -> None:
    args = argparse.Namespace(project="p-12345", region=None, bucket=None, service_account=None,
                              stack=None, data=None)  # fmt: skip
    with pytest.raises(vertex_spec.SpecError, match="no --region given and no stack output region"):
        vertex_jobs.resolve_where(args, lambda: {})


def test_the_stack_outputs_fill_what_no_flag_gives() -> None:
    outputs = {"project": "kgg-demo-project", "region": "europe-west4",
               "bucketName": "kgg-dev-bucket", "jobsServiceAccount": JOBS_ACCOUNT,
               "stack": "dev", "labels": {"team": "vision", "app": "keras-gpu-gcp"}}  # fmt: skip
    args = argparse.Namespace(project=None, region="us-central1", bucket=None,
                              service_account=None, stack=None, data=None)  # fmt: skip
    where = vertex_jobs.resolve_where(args, lambda: outputs)
    assert where.target == vertex_spec.Target("kgg-demo-project", "us-central1",
                                              "kgg-dev-bucket", JOBS_ACCOUNT)  # fmt: skip
    assert (where.stack, dict(where.labels)) == ("dev", {"team": "vision"})
    assert where.data.startswith("gs://kgg-dev-bucket/")


def test_submit_uploads_the_code_and_creates_the_job(
    fake_vertex: vertex.FakeVertex, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = kgg(capsys, "submit", *TARGET, "--run-id", "vx-2", "--head-epochs", "1")
    assert code == 0, err
    (job,) = fake_vertex.jobs.values()
    assert job["state"] == "JOB_STATE_QUEUED"
    assert job["labels"]["run"] == "vx-2"
    archive = vertex_jobs.code_archive()
    assert storage.read_bytes(f"gs://kgg-test-bucket/{archive.object_name}") == archive.data
    assert f"uploaded the code archive gs://kgg-test-bucket/{archive.object_name}" in out
    assert f"submitted run vx-2: {job['name']} (JOB_STATE_QUEUED)" in out
    assert f"kgg cancel {job['name']}" in out
    # A second submit finds the archive there.
    code, out, _ = kgg(capsys, "submit", *TARGET, "--run-id", "vx-3")
    assert code == 0 and "uploaded" not in out and len(fake_vertex.jobs) == 2


def test_sweep_creates_the_tuning_job_and_cancel_stops_it(
    fake_vertex: vertex.FakeVertex, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = kgg(capsys, "sweep", *TARGET, "--run-id", "vs-2", "--trials", "3",
                         "--param", "unfreeze-blocks=1..3")  # fmt: skip
    assert code == 0, err
    (name,) = fake_vertex.jobs
    assert "/hyperparameterTuningJobs/" in name and f"submitted sweep vs-2: {name}" in out
    code, out, err = kgg(capsys, "cancel", name)
    assert code == 0, err
    assert fake_vertex.jobs[name]["state"] == "JOB_STATE_CANCELLING"
    fake_vertex.settle_cancel(name)
    code, _, err = kgg(capsys, "cancel", name)
    assert code == 2 and "cannot be cancelled" in err and err.count("\n") == 1


def test_an_account_the_user_may_not_act_as_is_refused_with_the_fix(
    gcs_bucket: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    authority = iam.stack(gcs_bucket).authority
    with vertex.running_fake(authority, service_accounts=[JOBS_ACCOUNT]) as fake:
        monkeypatch.setenv(ENDPOINT_ENV, fake.url)
        other = "someone-else@kgg-demo-project.iam.gserviceaccount.com"
        argv = [*TARGET[:6], "--service-account", other, "--stack", "dev"]
        code, _, err = kgg(capsys, "submit", *argv)
    assert (code, fake.jobs) == (2, {})
    assert f"You do not have permission to act as service_account: {other}" in err
    assert "roles/iam.serviceAccountUser" in err


def test_cancel_takes_only_a_job_name(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = kgg(capsys, "cancel", "vx-1")
    assert code == 2 and "JOB 'vx-1' is not a job name like projects/" in err


def test_the_default_data_path_is_where_upload_puts_the_data() -> None:
    from kgg.cli.upload import DEFAULT_PREFIX

    assert vertex_jobs.DEFAULT_DATA_PATH == DEFAULT_PREFIX


def test_the_vms_account_cannot_create_jobs_the_laptop_user_can(gcs_bucket: str) -> None:
    """The declared grants give the VM nothing of Vertex AI: a notebook user cannot start jobs
    (nor reach the jobs' account through one)."""
    stack = iam.stack(gcs_bucket)
    fake = vertex.FakeVertex(stack.authority)
    body = json.dumps(vertex.sample_custom_job()).encode()
    path = "/v1/projects/kgg-demo-project/locations/us-central1/customJobs"
    status, answer = fake.answer("POST", path, f"Bearer {stack.vm_token}", body)
    assert (status, answer["error"]["status"]) == (403, "PERMISSION_DENIED")
    assert "aiplatform.customJobs.create" in answer["error"]["message"]
    status, _ = fake.answer("POST", path, f"Bearer {stack.owner_token}", body)
    assert status == 200 and len(fake.jobs) == 1
