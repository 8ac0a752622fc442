"""The bodies `kgg submit` and `kgg sweep` send are what Google's discovery document accepts, with
the machine, strategy, account and output folder asked for; the --param syntax and the container
launcher refuse what they must, in one line."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import sys
import tarfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from kgg.cli import sweep_params, vertex_launcher, vertex_spec
from kgg.cli.vertex_spec import SpecError
from tests import fake_aiplatform as vertex

TARGET = vertex_spec.Target(
    project="kgg-demo-project",
    region="us-central1",
    bucket="kgg-test-bucket",
    service_account="kgg-dev-jobs@kgg-demo-project.iam.gserviceaccount.com",
)
RUN = vertex_spec.Run(run_id="vx-20261203-0900", stack="dev", labels={"team": "vision"})
SHA = hashlib.sha256(b"archive").hexdigest()
COMMAND, ARGS = vertex_launcher.launcher(
    vertex_launcher.fuse_path("kgg-test-bucket", f"code/workload-{SHA[:16]}.tar.gz"),
    SHA,
    "kgg/startup/bootstrap.py",
    ["vertex", "--", "train", "--data", "gs://kgg-test-bucket/data/plant-seedlings"],
)
CONTAINER = vertex_spec.Container(
    vertex_launcher.DEFAULT_IMAGE, COMMAND, ARGS, {"PYTHONUNBUFFERED": "1"}
)
T4 = vertex_spec.Machine("n1-highmem-4")
L4 = vertex_spec.Machine("g2-standard-4", "NVIDIA_L4")


def train_parser() -> argparse.ArgumentParser:
    """Options shaped like the job's `train` (types, choices, flags, paths)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--recipe", choices=("fast", "guide"), default="fast")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--finetune-lr", type=float)
    parser.add_argument("--head-lr", type=float)
    parser.add_argument("--unfreeze-blocks", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--restart", action="store_true")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    return parser


OPTIONS = sweep_params.option_kinds(train_parser())


def submit_body(scheduling: vertex_spec.Scheduling, machine: vertex_spec.Machine = T4) -> dict:
    return vertex_spec.custom_job(TARGET, RUN, machine, scheduling, CONTAINER)


def sweep_body(**study: Any) -> dict:
    params = sweep_params.parse_params(
        ["finetune-lr=log:1e-5..1e-2", "unfreeze-blocks=1..3", "recipe=cat:fast,guide"], OPTIONS
    )
    spec = vertex_spec.Study(params, **({"max_trials": 4, "parallel": 2} | study))
    return vertex_spec.tuning_job(TARGET, RUN, T4, vertex_spec.Scheduling(), CONTAINER, spec)


# --- the bodies, against the document -------------------------------------------------------------
@pytest.mark.parametrize(
    ("scheduling", "machine", "strategy"),
    [
        (vertex_spec.Scheduling("standard"), T4, "STANDARD"),
        (vertex_spec.Scheduling("spot", timeout=timedelta(hours=6)), T4, "SPOT"),
        # Dynamic Workload Scheduler takes no T4: `kgg submit`'s flex-start default is the L4.
        (vertex_spec.Scheduling("flex-start", max_wait=timedelta(hours=2)), L4, "FLEX_START"),
    ],
)
def test_a_submit_body_is_what_the_document_accepts(
    scheduling: vertex_spec.Scheduling, machine: vertex_spec.Machine, strategy: str
) -> None:
    body = submit_body(scheduling, machine)
    assert vertex.validate("CustomJob", body) == []
    spec = body["jobSpec"]
    (pool,) = spec["workerPoolSpecs"]
    assert pool["machineSpec"] == {
        "machineType": machine.machine_type,
        "acceleratorType": machine.accelerator,
        "acceleratorCount": 1,
    }
    assert pool["replicaCount"] == "1"
    assert spec["serviceAccount"] == TARGET.service_account
    assert spec["baseOutputDirectory"] == {
        "outputUriPrefix": "gs://kgg-test-bucket/runs/vx-20261203-0900/"
    }
    assert spec["scheduling"]["strategy"] == strategy
    assert pool["containerSpec"]["command"] == ["python3", "-c", vertex_launcher.LAUNCHER]
    assert body["labels"] == {
        "team": "vision", "app": "keras-gpu-gcp", "stack": "dev", "run": "vx-20261203-0900",
        "kind": "submit",
    }  # fmt: skip


def test_flex_start_carries_its_wait_and_the_others_none() -> None:
    flex = submit_body(vertex_spec.Scheduling("flex-start", max_wait=timedelta(hours=2)), L4)
    assert flex["jobSpec"]["scheduling"] == {
        "strategy": "FLEX_START",
        "timeout": "86400s",
        "maxWaitDuration": "7200s",
    }
    forever = vertex_spec.Scheduling("flex-start", max_wait=timedelta(0))
    assert forever.body()["maxWaitDuration"] == "0s"
    spot = submit_body(vertex_spec.Scheduling("spot"))
    assert "maxWaitDuration" not in spot["jobSpec"]["scheduling"]


def test_a_sweep_of_four_trials_two_at_a_time_is_what_the_document_accepts() -> None:
    body = sweep_body()
    assert vertex.validate("HyperparameterTuningJob", body) == []
    assert (body["maxTrialCount"], body["parallelTrialCount"]) == (4, 2)
    assert body["studySpec"]["metrics"] == [{"metricId": "micro_f1", "goal": "MAXIMIZE"}]
    assert "algorithm" not in body["studySpec"]  # Vertex's default: Bayesian optimisation
    trial_spec = body["trialJobSpec"]
    assert trial_spec["baseOutputDirectory"]["outputUriPrefix"] == (
        "gs://kgg-test-bucket/runs/vx-20261203-0900/"
    )
    assert trial_spec["workerPoolSpecs"][0]["machineSpec"]["acceleratorType"] == "NVIDIA_TESLA_T4"
    assert body["labels"]["kind"] == "sweep"
    random = sweep_body(algorithm="random", max_failed=1)
    assert random["studySpec"]["algorithm"] == "RANDOM_SEARCH"
    assert random["maxFailedTrialCount"] == 1
    assert vertex.validate("HyperparameterTuningJob", random) == []


def test_the_bodies_are_accepted_by_the_fake_api_over_http() -> None:
    owner = "user:you@example.com"
    grants = [(p, "projects/kgg-demo-project") for p in (
        "aiplatform.customJobs.create", "aiplatform.hyperparameterTuningJobs.create",
        "iam.serviceAccounts.actAs")]  # fmt: skip
    authority = vertex.StaticAuthority({owner: grants})
    token = authority.issue(owner)
    with vertex.running_fake(authority) as fake:
        for collection, body in (("customJobs", submit_body(vertex_spec.Scheduling("spot"))),
                                 ("hyperparameterTuningJobs", sweep_body())):  # fmt: skip
            status, answer = fake.answer(
                "POST", f"/v1/{TARGET.parent}/{collection}", f"Bearer {token}",
                json.dumps(body).encode(),
            )  # fmt: skip
            assert status == 200, answer
            assert answer["state"] == "JOB_STATE_QUEUED"


def test_every_word_maps_to_a_value_of_the_documents_enums() -> None:
    schemas = vertex.document().schemas

    def enum(schema: str, field: str) -> list[str]:
        return schemas[f"GoogleCloudAiplatformV1{schema}"]["properties"][field]["enum"]

    assert set(vertex_spec.VERTEX_ACCELERATORS.values()) <= set(
        enum("MachineSpec", "acceleratorType")
    )
    assert set(vertex_spec.STRATEGIES.values()) <= set(enum("Scheduling", "strategy"))
    algorithms = {a for a in vertex_spec.ALGORITHMS.values() if a is not None}
    assert algorithms <= set(enum("StudySpec", "algorithm"))
    assert vertex_spec.vertex_accelerator("nvidia-l4") == "NVIDIA_L4"


def test_the_metric_the_study_maximises_is_the_one_the_job_reports(tmp_path: Path) -> None:
    from kgg.job import trial

    metric_file = tmp_path / "output.metrics"
    trial.MetricReporter.from_environment({"CLOUD_ML_HP_METRIC_FILE": str(metric_file)}).report(0.5)
    (report,) = trial.read_reports(metric_file)
    (metric,) = sweep_body()["studySpec"]["metrics"]
    assert float(report[metric["metricId"]]) == 0.5


def test_a_cpu_only_machine_sends_no_accelerator() -> None:
    body = submit_body(vertex_spec.Scheduling(), vertex_spec.Machine("n1-standard-4", None))
    assert body["jobSpec"]["workerPoolSpecs"][0]["machineSpec"] == {"machineType": "n1-standard-4"}
    assert vertex.validate("CustomJob", body) == []


@pytest.mark.parametrize(
    ("value", "text"),
    [(timedelta(days=1), "86400s"), (timedelta(seconds=1.5), "1.500s"),
     (timedelta(microseconds=5), "0.000005s"), (timedelta(0), "0s")],
)  # fmt: skip
def test_durations_are_written_as_the_json_mapping_reads_them(value: timedelta, text: str) -> None:
    assert vertex_spec.duration(value) == text


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: vertex_spec.Scheduling("spot", max_wait=timedelta(hours=1)),
         "--max-wait applies to --scheduling flex-start only, not spot"),
        (lambda: vertex_spec.Scheduling("queued"),
         "--scheduling 'queued' is not one of standard, spot, flex-start"),
        (lambda: vertex_spec.Scheduling("standard", timeout=timedelta(0)),
         "the run's timeout 0:00:00 must be above 0 and at most 10 years"),
        (lambda: submit_body(vertex_spec.Scheduling("flex-start")),
         "--scheduling flex-start takes only nvidia-a100-80gb, nvidia-h100-80gb, "
         "nvidia-h100-mega-80gb, nvidia-h200-141gb, nvidia-l4, nvidia-tesla-a100, not "
         "NVIDIA_TESLA_T4; pick one with --gpu-type, or use --scheduling standard or spot"),
        (lambda: submit_body(vertex_spec.Scheduling("flex-start", timeout=timedelta(days=8)), L4),
         "--timeout 8 days, 0:00:00 is above flex-start's limit of 7 days"),
        (lambda: vertex_spec.Machine("n1-highmem-4", accelerator_count=9),
         "--gpu-count 9 is not 1 to 8: a run uses one machine"),
        (lambda: vertex_spec.Machine("n1-highmem-4", "NVIDIA_TESLA_K80"),
         "accelerator 'NVIDIA_TESLA_K80' is not one of"),
        (lambda: vertex_spec.vertex_accelerator("nvidia-tesla-k80"),
         "--gpu-type 'nvidia-tesla-k80' has no Vertex AI accelerator; use one of"),
        (lambda: vertex_spec.Target("Kgg", "us-central1", "b1b", TARGET.service_account),
         "--project 'Kgg' is not a GCP project id"),
        (lambda: vertex_spec.Target("kgg-demo", "us-central1", "gs://b", TARGET.service_account),
         "--bucket 'gs://b' is not a bucket name, without gs://"),
        (lambda: vertex_spec.Target("kgg-demo", "us-central1", "bucket", "you@example.com"),
         "--service-account 'you@example.com' is not an email like"),
        (lambda: vertex_spec.Run("Run-1", "dev"), "run id 'Run-1' must be a lowercase letter"),
        (lambda: vertex_spec.Run("run-1", "Dev"), "label 'stack'='Dev' is not a valid label"),
        (lambda: vertex_spec.Container("image uri", ["python3"]),
         "image 'image uri' is not a container image URI"),
        (lambda: vertex_spec.Container("img", ["python3"], env={"KGG-RUN": "1"}),
         "environment variable 'KGG-RUN' is not a valid name"),
        (lambda: vertex_spec.Study([{"parameterId": "x"}], max_trials=2, parallel=3),
         "--parallel 3 must be 1 to --trials (2)"),
        (lambda: vertex_spec.Study([], max_trials=2, parallel=1),
         "a sweep needs at least one --param NAME=SPEC"),
        (lambda: sweep_body(algorithm="grid"),
         "--algorithm grid needs every parameter to be int, cat or discrete; finetune-lr is a "
         "float range"),
    ],
)  # fmt: skip
def test_bad_values_are_refused_in_one_line_naming_them(build: Any, message: str) -> None:
    with pytest.raises(SpecError) as refused:
        build()
    assert str(refused.value).startswith(message)
    assert "\n" not in str(refused.value)


# --- --param NAME=SPEC ----------------------------------------------------------------------------
def test_option_kinds_come_from_the_train_parser() -> None:
    assert sweep_params.option_kinds(train_parser()) == {
        "recipe": sweep_params.OptionKind("choice", ("fast", "guide")),
        "finetune-lr": sweep_params.OptionKind("float"),
        "head-lr": sweep_params.OptionKind("float"),
        "unfreeze-blocks": sweep_params.OptionKind("int"),
        "batch-size": sweep_params.OptionKind("int"),
    }


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("finetune-lr=log:1e-5..1e-2", {"parameterId": "finetune-lr", "scaleType": "UNIT_LOG_SCALE",
         "doubleValueSpec": {"minValue": 1e-5, "maxValue": 1e-2}}),
        ("head-lr=1e-4..0.01", {"parameterId": "head-lr", "scaleType": "UNIT_LINEAR_SCALE",
         "doubleValueSpec": {"minValue": 1e-4, "maxValue": 0.01}}),
        ("head-lr=linear:0.001..0.1", {"parameterId": "head-lr", "scaleType": "UNIT_LINEAR_SCALE",
         "doubleValueSpec": {"minValue": 0.001, "maxValue": 0.1}}),
        ("unfreeze-blocks=int:1..3", {"parameterId": "unfreeze-blocks",
         "scaleType": "UNIT_LINEAR_SCALE", "integerValueSpec": {"minValue": "1", "maxValue": "3"}}),
        ("unfreeze-blocks=1..3", {"parameterId": "unfreeze-blocks",
         "scaleType": "UNIT_LINEAR_SCALE", "integerValueSpec": {"minValue": "1", "maxValue": "3"}}),
        ("batch-size=log:8..128", {"parameterId": "batch-size", "scaleType": "UNIT_LOG_SCALE",
         "integerValueSpec": {"minValue": "8", "maxValue": "128"}}),
        ("head-lr=discrete:0.01,0.001", {"parameterId": "head-lr", "scaleType": "UNIT_LINEAR_SCALE",
         "discreteValueSpec": {"values": [0.001, 0.01]}}),
        ("batch-size=64,16,32", {"parameterId": "batch-size",
         "categoricalValueSpec": {"values": ["16", "32", "64"]}}),
        ("recipe=cat:fast,guide", {"parameterId": "recipe",
         "categoricalValueSpec": {"values": ["fast", "guide"]}}),
        ("--recipe=guide,fast", {"parameterId": "recipe",
         "categoricalValueSpec": {"values": ["guide", "fast"]}}),
    ],
)  # fmt: skip
def test_a_param_spec_becomes_the_study_parameter(text: str, spec: dict) -> None:
    parsed = sweep_params.parse_param(text, OPTIONS)
    assert parsed == spec
    study = vertex_spec.Study([parsed], max_trials=2, parallel=1).body()
    body = sweep_body()
    body["studySpec"] = study
    assert vertex.validate("HyperparameterTuningJob", body) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("finetune-lr", "--param 'finetune-lr': expected NAME=SPEC, like "
         "finetune-lr=log:1e-5..1e-2"),
        ("lr=log:1e-5..1e-2", "--param lr=log:1e-5..1e-2: 'lr' is not a train option a sweep can "
         "vary; use one of batch-size, finetune-lr, head-lr, recipe, unfreeze-blocks"),
        ("workers=1..8", "--param workers=1..8: 'workers' is not a train option"),
        ("finetune-lr=1e-2..1e-5", "--param finetune-lr=1e-2..1e-5: the range must go up: write "
         "finetune-lr=1e-05..0.01"),
        ("finetune-lr=log:0..1e-2", "--param finetune-lr=log:0..1e-2: a log range must lie "
         "above 0"),
        ("finetune-lr=int:1..3", "--param finetune-lr=int:1..3: finetune-lr takes a float: write "
         "finetune-lr=1..3"),
        ("unfreeze-blocks=1.5..3", "--param unfreeze-blocks=1.5..3: unfreeze-blocks takes whole "
         "numbers, not 1.5"),
        ("unfreeze-blocks=2..2", "--param unfreeze-blocks=2..2: a range needs two ends; to fix "
         "unfreeze-blocks, pass --unfreeze-blocks 2"),
        ("head-lr=fast..slow", "--param head-lr=fast..slow: 'fast' is not a number"),
        ("head-lr=logx:1..2", "--param head-lr=logx:1..2: unknown kind 'logx'; use log:, "
         "linear:, int:, discrete:, cat: or none"),
        ("head-lr=log:0.1", "--param head-lr=log:0.1: log: takes a range LOW..HIGH, like "
         "head-lr=log:1e-5..1e-2"),
        ("head-lr=discrete:1..2", "--param head-lr=discrete:1..2: discrete: takes a list"),
        ("head-lr=0.1", "--param head-lr=0.1: a sweep needs two values or more; to fix head-lr, "
         "pass --head-lr 0.1"),
        ("head-lr=0.1,0.1", "--param head-lr=0.1,0.1: a value is listed twice"),
        ("batch-size=cat:16,32", "--param batch-size=cat:16,32: batch-size is a number: write "
         "batch-size=discrete:16,32"),
        ("recipe=cat:fast,slow", "--param recipe=cat:fast,slow: recipe takes fast, guide; 'slow' "
         "is not one"),
        ("recipe=1..2", "--param recipe=1..2: recipe takes one of fast, guide: write "
         "recipe=cat:fast,guide"),
        ("recipe=cat:fast", "--param recipe=cat:fast: a sweep needs two values or more; to fix "
         "recipe, pass --recipe fast"),
        ("head-lr=inf..1", "--param head-lr=inf..1: 'inf' is not a finite number"),
    ],
)  # fmt: skip
def test_a_bad_param_spec_is_refused_naming_the_value_and_the_fix(text: str, message: str) -> None:
    with pytest.raises(SpecError) as refused:
        sweep_params.parse_param(text, OPTIONS)
    assert str(refused.value).startswith(message)
    assert "\n" not in str(refused.value)


def test_a_param_given_twice_or_also_fixed_is_refused() -> None:
    with pytest.raises(SpecError, match="--param head-lr is given twice; give it once"):
        sweep_params.parse_params(["head-lr=0.1,0.2", "head-lr=0.3,0.4"], OPTIONS)
    params = sweep_params.parse_params(["head-lr=0.1,0.2"], OPTIONS)
    sweep_params.fixed_conflicts(params, ["--recipe", "fast", "--head-epochs", "3"])
    for args in (["--head-lr", "0.1"], ["--head-lr=0.1"]):
        with pytest.raises(SpecError, match=r"--head-lr is both fixed .* and swept"):
            sweep_params.fixed_conflicts(params, args)


# --- the launcher, run for real -------------------------------------------------------------------
def archive_with(
    tmp_path: Path, members: dict[str, bytes], links: dict[str, str] | None = None
) -> Path:
    path = tmp_path / "code.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return path


ENTRY = b"import json, sys\nprint(json.dumps(sys.argv[1:]))\n"


def launch(archive: Path, sha: str, target: Path, *args: str) -> subprocess.CompletedProcess:
    command, arguments = vertex_launcher.launcher(str(archive), sha, "kgg/entry.py", args,
                                                  str(target))  # fmt: skip
    command[0] = sys.executable
    return subprocess.run([*command, *arguments], capture_output=True, text=True, timeout=60)


def test_the_launcher_runs_the_checked_archives_entry_with_every_argument(tmp_path: Path) -> None:
    archive = archive_with(tmp_path, {"kgg/entry.py": ENTRY, "uv.lock": b"lock"})
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    done = launch(archive, sha, tmp_path / "app", "vertex", "--", "train", "--finetune-lr=0.001")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ["vertex", "--", "train", "--finetune-lr=0.001"]
    assert (tmp_path / "app" / "uv.lock").read_bytes() == b"lock"


def test_the_launcher_refuses_an_archive_of_another_hash(tmp_path: Path) -> None:
    archive = archive_with(tmp_path, {"kgg/entry.py": ENTRY})
    done = launch(archive, "0" * 64, tmp_path / "app")
    assert done.returncode == 2
    assert f"has SHA-256 {hashlib.sha256(archive.read_bytes()).hexdigest()}, not {'0' * 64}" in (
        done.stderr
    )
    assert not (tmp_path / "app").exists()


@pytest.mark.parametrize(
    ("members", "links", "named"),
    [({"../evil.py": b"x"}, {}, "'../evil.py'"), ({"/etc/evil": b"x"}, {}, "'/etc/evil'"),
     ({}, {"kgg/entry.py": "/etc/passwd"}, "'kgg/entry.py'")],
)  # fmt: skip
def test_the_launcher_refuses_members_that_are_not_plain_files_inside(
    tmp_path: Path, members: dict, links: dict, named: str
) -> None:
    archive = archive_with(tmp_path, members, links)
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    done = launch(archive, sha, tmp_path / "app")
    assert done.returncode == 2
    assert f"holds {named}, not a plain file" in done.stderr
    assert not (tmp_path / "evil.py").exists()


def test_the_launcher_takes_only_a_real_hash() -> None:
    with pytest.raises(ValueError, match="is not a hex SHA-256"):
        vertex_launcher.launcher("/gcs/b/code.tar.gz", "abc", "kgg/entry.py")
