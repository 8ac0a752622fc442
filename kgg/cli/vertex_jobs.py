"""The Vertex AI jobs `kgg submit` and `kgg sweep` create (kgg/cli/commands/vertex.py): one
training run, or a sweep of trials, instead of on the stack's VM.

The bodies come from kgg/cli/vertex_spec.py; this module only gathers their values: where (the
stack's outputs, or --project/--region/--bucket/--service-account), the machine (the
catalogue's rules), the scheduling, the train options (checked by the job's own `train` parser,
so a typo is refused here, not after minutes of queueing), the study (--param) and the code
archive the container runs (kgg/infra/archive.py builds it as `pulumi up` does; uploaded when the
bucket lacks it, its SHA-256 checked by the launcher)."""

from __future__ import annotations

import argparse
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from kgg.cli import vertex_launcher, vertex_spec
from kgg.cli.vertex_api import CUSTOM_JOBS, TUNING_JOBS
from kgg.cli.vertex_spec import SpecError
from kgg.common import contract

# The entry script inside the code archive and its command: installs the locked env with uv, as
# the VM's startup does, then runs `python -m kgg` with what follows `--`.
ENTRY = "kgg/startup/bootstrap.py"
ENTRY_ARGS = ("vertex", "--")
DEFAULT_GPU = "nvidia-tesla-t4"
# flex-start does not take a T4 (vertex_spec.FLEX_START_ACCELERATORS): its default is the L4.
FLEX_START_DEFAULT_GPU = "nvidia-l4"
MANUAL_STACK = "manual"  # the stack label of a job whose target was all given by hand
DEFAULT_DATA_PATH = "data/plant-seedlings"  # the stack's dataPath default, upload's prefix
# The stack outputs the target comes from (kgg/infra/component.py exports them).
OUTPUTS = {
    "project": "project",
    "region": "region",
    "bucket": "bucketName",
    "service_account": "jobsServiceAccount",
}
# `train` options kgg sets itself: the data (--data here), the run's folder (Vertex's), and a
# restart (every job is a new run).
NOT_PASSED = frozenset({"help", "data", "out", "restart"})
TRAIN_DEST = "train__"
DURATION = re.compile(r"^(?P<number>\d+(?:\.\d+)?)(?P<unit>[smhd]?)$")
UNITS = {"s": 1, "": 1, "m": 60, "h": 3600, "d": 86400}


def train_parser() -> argparse.ArgumentParser:
    """The job's own `train` parser (kgg/job/cli.py): its options, types and choices."""
    from kgg.job import cli as job_cli

    subparsers = argparse.ArgumentParser(add_help=False).add_subparsers()
    job_cli.register(subparsers)
    return subparsers.choices["train"]


def _train_actions() -> list[argparse.Action]:
    return [a for a in train_parser()._actions if a.dest not in NOT_PASSED]


def add_train_options(parser: argparse.ArgumentParser) -> None:
    """The job's `train` options on `parser`, with its types and choices, present in the parsed
    arguments only when given (so the job's own defaults apply)."""
    group = parser.add_argument_group("train options (passed to the job's `kgg train`)")
    for action in _train_actions():
        kwargs: dict[str, Any] = {"dest": TRAIN_DEST + action.dest, "default": argparse.SUPPRESS}
        if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
            kwargs["action"] = "store_true"
        else:
            kwargs |= {"type": action.type, "choices": action.choices, "metavar": action.metavar}
        group.add_argument(*action.option_strings, help=action.help, **kwargs)


def train_args(args: argparse.Namespace) -> list[str]:
    """The train options given, as the job's command line takes them, in the parser's order."""
    argv: list[str] = []
    for action in _train_actions():
        dest = TRAIN_DEST + action.dest
        if not hasattr(args, dest):
            continue
        flag = action.option_strings[-1]
        if action.nargs == 0:
            argv.append(flag)
        else:
            argv.append(f"{flag}={getattr(args, dest)}")
    return argv


def parse_duration(option: str, text: str) -> timedelta:
    """`90s`, `30m`, `2h`, `1d` or plain seconds."""
    match = DURATION.match(text.strip())
    if not match:
        raise SpecError(f"{option} {text!r} is not a duration like 30m, 2h or 1d")
    return timedelta(seconds=float(match["number"]) * UNITS[match["unit"]])


def new_run_id(prefix: str, now: datetime | None = None) -> str:
    """`vx-20261203-091500-1a2b`: sortable by time, unique across laptops."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{prefix}-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


# --- the target: stack outputs or flags --------------------------------------------------------
@dataclass(frozen=True)
class Where:
    target: vertex_spec.Target
    stack: str
    labels: Mapping[str, str]
    data: str


def resolve_where(args: argparse.Namespace, outputs: Callable[[], dict[str, Any]]) -> Where:
    """The target from the flags, the rest from the stack's outputs (read only when a flag is
    missing); a value in neither is refused naming the flag."""
    given = {key: getattr(args, key) for key in OUTPUTS}
    stack = outputs() if not all(given.values()) or args.stack is None else {}
    values = {}
    for key, output in OUTPUTS.items():
        value = given[key] or stack.get(output)
        if not value:
            flag = "--" + key.replace("_", "-")
            raise SpecError(
                f"no {flag} given and no stack output {output} (`pulumi stack output "
                f"--json` in the project, after `pulumi up`); pass {flag}"
            )
        values[key] = str(value).removeprefix("gs://").strip("/") if key == "bucket" else value
    target = vertex_spec.Target(**values)
    name = args.stack or stack.get("stack") or MANUAL_STACK
    stack_labels = stack.get("labels")
    if not isinstance(stack_labels, dict):
        stack_labels = {}
    labels = {k: str(v) for k, v in stack_labels.items() if k not in ("app", "stack")}
    data = args.data or f"gs://{target.bucket}/{stack.get('dataPath') or DEFAULT_DATA_PATH}"
    return Where(target, str(name), labels, data)


def machine(args: argparse.Namespace) -> vertex_spec.Machine:
    """--gpu-type/--gpu-count/--machine-type by the catalogue's rules (the VM's): a current GPU,
    a count it comes in, a machine type that takes it (default: the catalogue's for it)."""
    from kgg.infra.catalogue import CURRENT_GPUS, GPUS

    gpu_type = args.gpu_type or (
        FLEX_START_DEFAULT_GPU if args.scheduling == "flex-start" else DEFAULT_GPU
    )
    spec = GPUS.get(gpu_type)
    if spec is None or spec.retired is not None:
        raise SpecError(f"--gpu-type {gpu_type!r} is not one of {', '.join(CURRENT_GPUS)}")
    machine_type = args.machine_type or spec.default_machine_type
    if not spec.fits_machine_type(machine_type):
        fits = sorted(spec.bundled_machine_types) or ["an n1- machine type"]
        raise SpecError(
            f"--machine-type {machine_type} does not take {gpu_type}; use {', '.join(fits)}"
        )
    count = spec.gpus_in(machine_type, args.gpu_count)
    if spec.attach == "guest" and count not in spec.counts:
        raise SpecError(
            f"--gpu-count {count}: {gpu_type} comes in "
            f"{', '.join(map(str, spec.counts))} per machine"
        )
    accelerator = vertex_spec.vertex_accelerator(gpu_type)
    return vertex_spec.Machine(machine_type, accelerator, count)


def scheduling(args: argparse.Namespace) -> vertex_spec.Scheduling:
    max_wait = parse_duration("--max-wait", args.max_wait) if args.max_wait else None
    return vertex_spec.Scheduling(
        args.scheduling, parse_duration("--timeout", args.timeout), max_wait
    )


# --- the code the container runs ---------------------------------------------------------------
@dataclass(frozen=True)
class Code:
    object_name: str
    sha256: str
    data: bytes


def code_archive() -> Code:
    """The code archive as `pulumi up` builds it from this checkout (same bytes, same name)."""
    from kgg.infra.archive import build_archive

    archive = build_archive()
    return Code(archive.object_name, archive.sha256, archive.data)


def ensure_uploaded(bucket: str, code: Code) -> bool:
    """Uploads the archive unless the bucket has it (its name holds its hash; the launcher
    checks the bytes anyway). True when it uploaded."""
    from kgg.common import storage

    url = f"gs://{bucket}/{code.object_name}"
    if storage.generation(url) is not None:
        return False
    storage.write_bytes(url, code.data, content_type="application/gzip")
    return True


def container_env() -> dict[str, str]:
    """The container's environment: the entry's own `kgg` imports from the extracted app (run as
    a script, its folder is kgg/startup/), and the VM's uv and Python pins, so a job installs the
    env exactly as a VM of the same code does."""
    from kgg.startup import render

    return {
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": vertex_launcher.DEFAULT_TARGET,
        contract.UV_VERSION_ENV: render.UV_VERSION,
        contract.UV_WHEEL_URL_ENV: render.UV_WHEEL_URL,
        contract.UV_WHEEL_SHA256_ENV: render.UV_WHEEL_SHA256,
        contract.PYTHON_MIN_ENV: render.PYTHON_MIN,
        contract.PYTHON_MAX_ENV: render.PYTHON_MAX,
        contract.MANAGED_PYTHON_ENV: render.MANAGED_PYTHON,
    }


def container(where: Where, code: Code, job_args: Sequence[str]) -> vertex_spec.Container:
    command, launcher_args = vertex_launcher.launcher(
        vertex_launcher.fuse_path(where.target.bucket, code.object_name),
        code.sha256,
        ENTRY,
        [*ENTRY_ARGS, "train", "--data", where.data, *job_args],
    )
    return vertex_spec.Container(vertex_launcher.DEFAULT_IMAGE, command, launcher_args,
                                 container_env())  # fmt: skip


# --- the jobs ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """What a create sends: the collection, the parent and the body."""

    collection: str
    parent: str
    body: dict[str, Any]
    run_id: str


def submit_job(args: argparse.Namespace, where: Where, code: Code) -> Job:
    run = vertex_spec.Run(args.run_id or new_run_id("vx"), where.stack, where.labels)
    out = vertex_spec.output_prefix(where.target.bucket, run.run_id).rstrip("/")
    job_args = [*train_args(args), f"--out={out}"]
    body = vertex_spec.custom_job(
        where.target, run, machine(args), scheduling(args), container(where, code, job_args)
    )
    return Job(CUSTOM_JOBS, where.target.parent, body, run.run_id)


def sweep_job(args: argparse.Namespace, where: Where, code: Code) -> Job:
    from kgg.cli import sweep_params

    run = vertex_spec.Run(args.run_id or new_run_id("vs"), where.stack, where.labels)
    fixed = train_args(args)
    params = sweep_params.parse_params(args.param, sweep_params.option_kinds(train_parser()))
    sweep_params.fixed_conflicts(params, fixed)
    study = vertex_spec.Study(params, args.trials, args.parallel, args.max_failed, args.algorithm)
    # Each trial's folder is <base>/<trial-id>/: the job takes it from AIP_MODEL_DIR.
    body = vertex_spec.tuning_job(
        where.target, run, machine(args), scheduling(args), container(where, code, fixed), study
    )
    return Job(TUNING_JOBS, where.target.parent, body, run.run_id)
