"""The exact JSON bodies `kgg submit` and `kgg sweep` send to Vertex AI
(`projects.locations.customJobs.create`, `.hyperparameterTuningJobs.create`), built from plain
values; `--dry-run` prints them. Pure: no I/O, no Google client.

Every field and enum here exists in the aiplatform v1 discovery document (revision 20261106,
google-api-python-client 2.202.0): `Scheduling.strategy` STANDARD | SPOT | FLEX_START (ON_DEMAND
and LOW_COST are deprecated there), `Scheduling.maxWaitDuration` (FLEX_START only; default 24 h,
0 = forever) and `timeout` (default 7 days) as duration strings, `MachineSpec.acceleratorType`
from its enum, `replicaCount` an int64 (written as a string, as the API writes it), the study's
`algorithm` (unset = Vertex's default Bayesian optimisation, GRID_SEARCH, RANDOM_SEARCH) and
`measurementSelectionType`. tests/cli/test_vertex_spec.py checks each body against the document.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from kgg.common.contract import METRIC_ID, run_folder
from kgg.common.errors import UserError

APP_LABEL = "keras-gpu-gcp"  # infra's `app` label on every resource of a stack

# --scheduling: the user's word -> Scheduling.strategy.
STRATEGIES: Mapping[str, str] = {"standard": "STANDARD", "spot": "SPOT", "flex-start": "FLEX_START"}
# --algorithm: the user's word -> StudySpec.algorithm (unset: Vertex's Bayesian optimisation).
ALGORITHMS: Mapping[str, str | None] = {
    "bayesian": None,
    "random": "RANDOM_SEARCH",
    "grid": "GRID_SEARCH",
}
# The catalogue's GCE accelerator names -> MachineSpec.acceleratorType (the document's enum).
VERTEX_ACCELERATORS: Mapping[str, str] = {
    "nvidia-tesla-t4": "NVIDIA_TESLA_T4",
    "nvidia-l4": "NVIDIA_L4",
    "nvidia-tesla-v100": "NVIDIA_TESLA_V100",
    "nvidia-tesla-p100": "NVIDIA_TESLA_P100",
    "nvidia-tesla-p4": "NVIDIA_TESLA_P4",
    "nvidia-tesla-a100": "NVIDIA_TESLA_A100",
    "nvidia-a100-80gb": "NVIDIA_A100_80GB",
    "nvidia-h100-80gb": "NVIDIA_H100_80GB",
    "nvidia-h100-mega-80gb": "NVIDIA_H100_MEGA_80GB",
    "nvidia-h200-141gb": "NVIDIA_H200_141GB",
}
# Dynamic Workload Scheduler (FLEX_START) takes only these GPUs and a timeout of at most 7 days
# (cloud.google.com/vertex-ai/docs/training/schedule-jobs-dws, "Requirements", checked 2026-12).
FLEX_START_ACCELERATORS = frozenset({"NVIDIA_L4", "NVIDIA_TESLA_A100", "NVIDIA_A100_80GB",
    "NVIDIA_H100_80GB", "NVIDIA_H100_MEGA_80GB", "NVIDIA_H200_141GB", "NVIDIA_B200"})  # fmt: skip
FLEX_START_MAX_TIMEOUT = timedelta(days=7)
# One machine per run (MirroredStrategy; multi-worker Keras 3 on TensorFlow is broken,
# keras-team/keras#20585), so at most the 8 GPUs one machine has.
MAX_GPUS = 8
# A label value, an object-name segment and part of the display name at once.
RUN_ID = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
PROJECT_ID = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
REGION = re.compile(r"^[a-z]+-[a-z]+\d+$")
BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")
SERVICE_ACCOUNT = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]@[a-z0-9.-]+\.gserviceaccount\.com$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_DURATION = timedelta(days=365 * 10)


class SpecError(UserError, ValueError):
    """A value the body cannot carry: one line naming it and the fix."""


@dataclass(frozen=True)
class Target:
    """Where the job runs and writes: the stack's outputs, or --project/--region/--bucket/
    --service-account."""

    project: str
    region: str
    bucket: str
    service_account: str

    def __post_init__(self) -> None:
        checks = (
            ("--project", self.project, PROJECT_ID, "a GCP project id like my-project-123"),
            ("--region", self.region, REGION, "a region like us-central1"),
            ("--bucket", self.bucket, BUCKET, "a bucket name, without gs://"),
            (
                "--service-account",
                self.service_account,
                SERVICE_ACCOUNT,
                "an email like kgg-dev-jobs@PROJECT.iam.gserviceaccount.com",
            ),
        )
        for option, value, pattern, expected in checks:
            if not pattern.match(value):
                raise SpecError(f"{option} {value!r} is not {expected}")

    @property
    def parent(self) -> str:
        return f"projects/{self.project}/locations/{self.region}"

    @property
    def endpoint(self) -> str:
        """Vertex AI's regional endpoint for this region (the API's root URL)."""
        return f"https://{self.region}-aiplatform.googleapis.com/"


@dataclass(frozen=True)
class Machine:
    """One machine: its type, its GPUs (a MachineSpec.acceleratorType; None: CPU only) and disk."""

    machine_type: str
    accelerator: str | None = "NVIDIA_TESLA_T4"
    accelerator_count: int = 1
    boot_disk_gb: int = 100
    boot_disk_type: str = "pd-ssd"

    def __post_init__(self) -> None:
        if not re.match(r"^[a-z][a-z0-9-]+$", self.machine_type):
            raise SpecError(
                f"--machine-type {self.machine_type!r} is not a machine type like n1-highmem-4"
            )
        known = sorted(VERTEX_ACCELERATORS.values())
        if self.accelerator is not None and self.accelerator not in known:
            raise SpecError(f"accelerator {self.accelerator!r} is not one of {', '.join(known)}")
        if self.accelerator is not None and not 1 <= self.accelerator_count <= MAX_GPUS:
            raise SpecError(
                f"--gpu-count {self.accelerator_count} is not 1 to {MAX_GPUS}: a "
                "run uses one machine"
            )
        if self.boot_disk_type not in ("pd-ssd", "pd-standard", "hyperdisk-balanced"):
            raise SpecError(
                f"boot disk type {self.boot_disk_type!r} is not pd-ssd, "
                "pd-standard or hyperdisk-balanced"
            )
        if not 100 <= self.boot_disk_gb <= 64_000:
            raise SpecError(f"boot disk {self.boot_disk_gb} GB is not 100 to 64000 GB")

    def machine_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"machineType": self.machine_type}
        if self.accelerator is not None:
            spec |= {
                "acceleratorType": self.accelerator,
                "acceleratorCount": self.accelerator_count,
            }
        return spec


def vertex_accelerator(gpu_type: str) -> str:
    """The MachineSpec.acceleratorType of a catalogue GPU (`nvidia-tesla-t4`)."""
    try:
        return VERTEX_ACCELERATORS[gpu_type]
    except KeyError:
        raise SpecError(
            f"--gpu-type {gpu_type!r} has no Vertex AI accelerator; use one of "
            f"{', '.join(sorted(VERTEX_ACCELERATORS))}"
        ) from None


@dataclass(frozen=True)
class Scheduling:
    """--scheduling, --max-wait (flex-start only) and the run's time limit."""

    strategy: str = "standard"
    timeout: timedelta = timedelta(days=1)
    max_wait: timedelta | None = None

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise SpecError(f"--scheduling {self.strategy!r} is not one of {', '.join(STRATEGIES)}")
        if self.max_wait is not None and self.strategy != "flex-start":
            raise SpecError(
                f"--max-wait applies to --scheduling flex-start only, not {self.strategy}"
            )
        if not timedelta(0) < self.timeout <= MAX_DURATION:
            raise SpecError(
                f"the run's timeout {self.timeout} must be above 0 and at most 10 years"
            )
        if self.max_wait is not None and not timedelta(0) <= self.max_wait <= MAX_DURATION:
            raise SpecError(f"--max-wait {self.max_wait} must be 0 (wait forever) to 10 years")

    def body(self) -> dict[str, Any]:
        body = {"strategy": STRATEGIES[self.strategy], "timeout": duration(self.timeout)}
        if self.max_wait is not None:
            body["maxWaitDuration"] = duration(self.max_wait)
        return body


def duration(value: timedelta) -> str:
    """A google.protobuf.Duration in JSON: whole seconds, or with 3/6 fractional digits."""
    micros = round(value.total_seconds() * 1_000_000)
    seconds, fraction = divmod(micros, 1_000_000)
    if fraction == 0:
        return f"{seconds}s"
    text = f"{fraction:06d}"
    return f"{seconds}.{text[:3] if text.endswith('000') else text}s"


@dataclass(frozen=True)
class Container:
    """What runs: the image, its command and arguments (a trial's parameters come after them as
    `--<parameterId>=<value>`) and its environment."""

    image_uri: str
    command: Sequence[str]
    args: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.image_uri or any(c.isspace() for c in self.image_uri):
            raise SpecError(f"image {self.image_uri!r} is not a container image URI")
        for name in self.env:
            if not ENV_NAME.match(name):
                raise SpecError(
                    f"environment variable {name!r} is not a valid name (letters, "
                    "digits, _; not first a digit)"
                )
        if len(self.env) > 100:
            raise SpecError(f"{len(self.env)} environment variables: Vertex takes at most 100")

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"imageUri": self.image_uri, "command": list(self.command)}
        if self.args:
            body["args"] = list(self.args)
        if self.env:
            body["env"] = [{"name": k, "value": v} for k, v in self.env.items()]
        return body


@dataclass(frozen=True)
class Run:
    """Which run this is: its id (its folder gs://BUCKET/runs/<run-id>/), the stack, and the
    stack's other labels (infra's user labels)."""

    run_id: str
    stack: str
    labels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not RUN_ID.match(self.run_id):
            raise SpecError(
                f"run id {self.run_id!r} must be a lowercase letter, then up to 62 "
                "lowercase letters, digits, - or _"
            )
        for key, value in {**self.labels, "stack": self.stack}.items():
            if not LABEL_KEY.match(key) or not LABEL_VALUE.match(value):
                raise SpecError(
                    f"label {key!r}={value!r} is not a valid label: lowercase "
                    "letters, digits, - and _, keys start with a letter"
                )

    def labels_for(self, kind: str) -> dict[str, str]:
        """The user's labels plus ours (ours win, as infra's do): the app, the stack, the run and
        whether it is one run or a sweep, so `kgg runs` lists them with one filter."""
        return dict(self.labels) | {
            "app": APP_LABEL,
            "stack": self.stack,
            "run": self.run_id,
            "kind": kind,
        }


def output_prefix(bucket: str, run_id: str) -> str:
    """Where the run writes: the same folder a VM run has (`runs`, `pull`, `tensorboard` read
    it unchanged); a sweep's trials each get <prefix><trial-id>/ from Vertex."""
    return f"gs://{bucket}/{run_folder(run_id)}"


def custom_job_spec(
    target: Target, machine: Machine, scheduling: Scheduling, container: Container, run_id: str
) -> dict[str, Any]:
    """The CustomJobSpec of a run (a CustomJob's jobSpec, a tuning job's trialJobSpec): one
    pool of one replica."""
    check_flex_start(machine, scheduling)
    pool = {
        "machineSpec": machine.machine_spec(),
        "replicaCount": "1",
        "diskSpec": {
            "bootDiskType": machine.boot_disk_type,
            "bootDiskSizeGb": machine.boot_disk_gb,
        },
        "containerSpec": container.body(),
    }
    return {
        "workerPoolSpecs": [pool],
        "serviceAccount": target.service_account,
        "baseOutputDirectory": {"outputUriPrefix": output_prefix(target.bucket, run_id)},
        "scheduling": scheduling.body(),
    }


def check_flex_start(machine: Machine, scheduling: Scheduling) -> None:
    """What Vertex refuses of a FLEX_START job, refused here, before it queues."""
    if scheduling.strategy != "flex-start":
        return
    if machine.accelerator not in FLEX_START_ACCELERATORS:
        gpus = sorted(gce for gce, api in VERTEX_ACCELERATORS.items()
                      if api in FLEX_START_ACCELERATORS)  # fmt: skip
        raise SpecError(
            f"--scheduling flex-start takes only {', '.join(gpus)}, not {machine.accelerator}; "
            "pick one with --gpu-type, or use --scheduling standard or spot"
        )
    if scheduling.timeout > FLEX_START_MAX_TIMEOUT:
        raise SpecError(
            f"--timeout {scheduling.timeout} is above flex-start's limit of 7 days; pass "
            "--timeout 7d or less"
        )


def custom_job(
    target: Target, run: Run, machine: Machine, scheduling: Scheduling, container: Container
) -> dict[str, Any]:
    """The body of customJobs.create for `kgg submit`."""
    return {
        "displayName": f"kgg-{run.stack}-{run.run_id}"[:128],
        "labels": run.labels_for("submit"),
        "jobSpec": custom_job_spec(target, machine, scheduling, container, run.run_id),
    }


@dataclass(frozen=True)
class Study:
    """--trials, --parallel, the parameters (sweep_params.parse_params) and how to search."""

    parameters: Sequence[Mapping[str, Any]]
    max_trials: int
    parallel: int
    max_failed: int | None = None
    algorithm: str = "bayesian"

    def __post_init__(self) -> None:
        if not self.parameters:
            raise SpecError("a sweep needs at least one --param NAME=SPEC")
        if self.max_trials < 1:
            raise SpecError(f"--trials {self.max_trials} must be at least 1")
        if not 1 <= self.parallel <= self.max_trials:
            raise SpecError(f"--parallel {self.parallel} must be 1 to --trials ({self.max_trials})")
        if self.max_failed is not None and not 0 <= self.max_failed <= self.max_trials:
            raise SpecError(
                f"--max-failed {self.max_failed} must be 0 (Vertex decides) to "
                f"--trials ({self.max_trials})"
            )
        if self.algorithm not in ALGORITHMS:
            raise SpecError(f"--algorithm {self.algorithm!r} is not one of {', '.join(ALGORITHMS)}")
        if self.algorithm == "grid":
            doubles = [p["parameterId"] for p in self.parameters if "doubleValueSpec" in p]
            if doubles:
                raise SpecError(
                    f"--algorithm grid needs every parameter to be int, cat or "
                    f"discrete; {', '.join(doubles)} is a float range: give it "
                    "discrete:V1,V2,..."
                )

    def body(self) -> dict[str, Any]:
        study: dict[str, Any] = {
            "metrics": [{"metricId": METRIC_ID, "goal": "MAXIMIZE"}],
            "parameters": [dict(p) for p in self.parameters],
            # The job reports once, its headline score at the end: the last is the one.
            "measurementSelectionType": "LAST_MEASUREMENT",
        }
        if ALGORITHMS[self.algorithm] is not None:
            study["algorithm"] = ALGORITHMS[self.algorithm]
        return study


def tuning_job(
    target: Target,
    run: Run,
    machine: Machine,
    scheduling: Scheduling,
    container: Container,
    study: Study,
) -> dict[str, Any]:
    """The body of hyperparameterTuningJobs.create for `kgg sweep`: each trial is one run of the
    same container, its results in gs://BUCKET/runs/<sweep-id>/<trial-id>/."""
    body = {
        "displayName": f"kgg-{run.stack}-{run.run_id}"[:128],
        "labels": run.labels_for("sweep"),
        "studySpec": study.body(),
        "maxTrialCount": study.max_trials,
        "parallelTrialCount": study.parallel,
        "trialJobSpec": custom_job_spec(target, machine, scheduling, container, run.run_id),
    }
    if study.max_failed is not None:
        body["maxFailedTrialCount"] = study.max_failed
    return body
