"""`kgg status`: what the VM reported, as a table a person can act on.

Two documents drive it (schemas in docs/CONTRACTS.md): `status/startup.json` (the model in
kgg/common/documents.py), written by the startup script and the VM agent at every step, and
`runs/<run-id>/progress.json`, written by the training job every epoch. `render_status` is a pure
function of the two; `watch` repeats it until the run ends.

Whoever can write the bucket writes these documents: `parse_doc` strips terminal escapes from
them, the commands built for the user take only names GCE itself could have given, and the
notebook's address and certificate come from GCE (kgg/cli/notebook_identity.py), never from
them.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from kgg.cli.capacity import GroupState, render_group
from kgg.cli.gce import GceError
from kgg.cli.lines import GCE_NAME, clock, field
from kgg.cli.notebook_identity import render_notebook
from kgg.common import storage
from kgg.common.contract import (
    JUPYTER_UNIT,
    PROGRESS_FILE,
    RUNS_PREFIX,
    STATUS_OBJECT,
    TRAINING_UNIT,
)
from kgg.common.documents import Cost, Failure, Progress, StartupStatus, Step
from kgg.common.terminal import clean_document
from kgg.common.timestamps import format_duration, parse_time

# A healthy VM rewrites its status at every step and the job its progress every epoch; silence for
# longer than this while something is still running usually means the VM stopped (spot preemption,
# idle shutdown) or the startup script died.
STALE_AFTER = timedelta(minutes=20)
LOG_TAIL_LINES = 20
WATCH_EXIT_DONE = 0
WATCH_EXIT_FAILED = 1
WATCH_EXIT_GAVE_UP = 3

STEP_STATES = ("done", "running", "pending", "skipped", "failed")
# What hints say when neither GCE nor the VM named the VM: GCE picks its name and zone at run
# time (the VM is one of a group), so there is nothing static to substitute.
INSTANCE_CMD = "INSTANCE"
ZONE_CMD = "ZONE"
# systemd units of the VM (kgg/startup/startup.sh.j2).
STARTUP_UNIT = "google-startup-scripts.service"

Doc = dict[str, Any]


@dataclass(frozen=True)
class Vm:
    """How hints name the VM: from GCE or the status document when they say, else
    placeholders. SSH goes through IAP (the firewall opens port 22 to Google's IAP range only):
    `--tunnel-through-iap`, or the project's own `kgg ssh`, which finds the VM."""

    instance: str = INSTANCE_CMD
    zone: str = ZONE_CMD
    project: str = ""

    @property
    def _where(self) -> str:
        return f"--zone {self.zone}" + (f" --project {self.project}" if self.project else "")

    @property
    def serial_console(self) -> str:
        return f"gcloud compute instances get-serial-port-output {self.instance} {self._where}"

    def ssh(self, command: str) -> str:
        if self.instance == INSTANCE_CMD or self.zone == ZONE_CMD:
            return f"kgg ssh -- {command}"
        return (
            f"gcloud compute ssh {self.instance} --zone {self.zone} --tunnel-through-iap"
            + (f" --project {self.project}" if self.project else "")
            + f" -- {command}"
        )

    def journal(self, unit: str) -> str:
        return self.ssh(f"sudo journalctl -u {unit} -n 100 --no-pager")

    @property
    def startup_log(self) -> str:
        return self.journal(STARTUP_UNIT)

    @property
    def rerun_startup(self) -> str:
        return self.ssh("sudo google_metadata_script_runner startup")

    @property
    def reset(self) -> str:
        return f"gcloud compute instances reset {self.instance} {self._where}"


def _shell_name(value: Any, placeholder: str) -> str:
    """A GCE name from the status document as one shell word; anything else, the placeholder.

    The hints are pasted into a shell: `kgg-vm; curl ... | sh` must never become a command."""
    if isinstance(value, str) and GCE_NAME.fullmatch(value):
        return shlex.quote(value)
    return placeholder


def _vm(startup: StartupStatus | None, group: GroupState | None = None) -> Vm:
    """GCE's running VM first (the status document may still name one the group replaced)."""
    running = group.running if group else None
    project = shlex.quote(group.project) if group and group.project else ""
    if running and running.name and running.zone:
        return Vm(shlex.quote(running.name), shlex.quote(running.zone), project)
    if startup is None:
        return Vm(project=project)
    return Vm(_shell_name(startup.instance, Vm.instance), _shell_name(startup.zone, Vm.zone),
              project)  # fmt: skip


def hint_for(step: str, message: str, vm: Vm) -> list[str]:
    """The next thing to try when `step` failed with `message` (used when the VM gave no hint).

    Prose lines, and commands on lines of their own (prefixed `$ `) so they copy cleanly."""
    text = f"{step} {message}".lower()
    if "quota" in text or "gpus_all_regions" in text:
        return [
            "the project lacks GPU quota: request GPUS_ALL_REGIONS (and the region's GPU quota)",
            "at https://console.cloud.google.com/iam-admin/quotas, then run `pulumi up` again",
        ]
    if "zone_resource_pool_exhausted" in text or "does not have enough resources" in text:
        return [
            "the zone is out of this GPU; the VM's group keeps retrying by itself. See the zones",
            "and their errors, and let the group pick a zone again:",
            "$ kgg status",
            "$ kgg stop && kgg start",
            "more zones (the region's zones with the GPU), then `pulumi up`:",
            "$ gcloud compute accelerator-types list --filter=zone:$(pulumi config get gcp:region)",
            "$ pulumi config set --path 'zones[0]' ZONE",
        ]
    if step == "driver" or "nvidia" in text or "driver" in text:
        return [
            "read the driver install log on the serial console:",
            f"$ {vm.serial_console}",
            "a reboot often completes a half-finished install:",
            f"$ {vm.reset}",
            "or use the Deep Learning VM image, which has the driver:",
            "$ pulumi config set image deeplearning && pulumi up",
        ]
    if step in ("gpu-check", "gpu_check", "gpu"):
        return [
            "the driver is installed but the GPU is not usable (often a driver/library version",
            "mismatch after a kernel upgrade): reboot, then read the serial console",
            f"$ {vm.reset}",
            f"$ {vm.serial_console}",
        ]
    if step in ("python", "env", "uv", "code", "workload"):
        return [
            "installing the Python environment failed (network to PyPI? disk full?): read the log,",
            f"$ {vm.startup_log}",
            "then run the startup script again:",
            f"$ {vm.rerun_startup}",
        ]
    if step in ("jupyter", "notebook", "tls"):
        return [
            "JupyterLab did not start: read its log",
            f"$ {vm.journal(JUPYTER_UNIT)}",
            "a missing password: `pulumi config set --secret jupyterPassword`, then `pulumi up`",
        ]
    if step in ("data", "training", "train"):
        return [
            "the training job failed: read its log, fetch what it wrote, check the data",
            f"$ {vm.journal(TRAINING_UNIT)}",
            "$ kgg pull latest",
            "$ kgg upload LOCAL_DIR",
        ]
    return ["read the startup log on the serial console:", f"$ {vm.serial_console}"]


def _step_rows(steps: dict[str, Step], now: datetime) -> list[str]:
    rows = [("step", "state", "started", "took", "detail")]
    for name, step in steps.items():
        state = step.state
        started = parse_time(step.started)
        finished = parse_time(step.finished)
        if started and finished:
            took = format_duration((finished - started).total_seconds())
        elif started and state == "running":
            took = format_duration((now - started).total_seconds()) + " so far"
        else:
            took = ""
        label = state.upper() if state == "failed" else state
        rows.append((name, label, clock(started) if started else "", took, step.detail or ""))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return [
        (
            "  "
            + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4]))
            + "  "
            + row[4]
        ).rstrip()
        for row in rows
    ]


def _metric_text(metrics: dict[str, Any]) -> str:
    parts = []
    for name, value in metrics.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            parts.append(f"{name} {value:.4f}")
        else:
            parts.append(f"{name} {value}")
    return "  ".join(parts)


def render_training(
    startup: StartupStatus | None, progress: Progress | None, now: datetime
) -> list[str]:
    """The training part of the status: the VM's view, then the job's progress."""
    run_id = startup.run_id if startup else None
    vm_view = startup.training if startup else ""
    training_step = startup.steps["training"].state if startup else "pending"
    lines = []
    run = f"run {run_id}: " if run_id else ""
    if progress is None:
        if vm_view.startswith("waiting for data"):
            lines.append(field("Training", f"{run}{vm_view}"))
            if not _is_failed(startup, progress):
                lines.append(
                    "  next: upload the data (LOCAL_DIR holds train/<class>/*.png):\n"
                    "  $ kgg upload LOCAL_DIR"
                )
        elif vm_view == "off" and training_step in ("done", "skipped"):
            lines.append(field("Training", "off (runTraining is false): train from the notebook"))
        elif vm_view == "off":
            lines.append(field("Training", "not started yet (after the boot steps)"))
        elif vm_view:
            lines.append(field("Training", f"{run}{vm_view}; no progress reported yet"))
        else:
            lines.append(field("Training", "not started"))
        return lines
    state = progress.state or "?"
    lines.append(field("Training", f"{run}{state.upper() if state == 'failed' else state}"))
    epoch, epochs = progress.epoch, progress.epochs
    where = [f"recipe {progress.recipe or '?'}", f"phase {progress.phase or '?'}"]
    if epoch is not None:
        where.append(f"epoch {epoch}/{epochs}" if epochs else f"epoch {epoch}")
    lines.append("  " + ", ".join(where))
    if progress.metrics:
        lines.append("  " + _metric_text(progress.metrics))
    speed = []
    if progress.images_per_second is not None:
        speed.append(f"{progress.images_per_second:.1f} img/s")
    eta = progress.eta_seconds
    updated = parse_time(progress.updated)
    if state == "running" and eta is not None:
        remaining = eta - ((now - updated).total_seconds() if updated else 0)
        finish = (updated or now) + timedelta(seconds=eta)
        speed.append(f"ETA {format_duration(max(0.0, remaining))} (about {clock(finish)} UTC)")
    if speed:
        lines.append("  " + ", ".join(speed))
    if state == "done" and run_id:
        lines.append(f"  next: kgg pull {shlex.quote(str(run_id))}")
    if state == "failed" and progress.error:
        lines.append(f"  error: {progress.error}")
    return lines


def _is_failed(startup: StartupStatus | None, progress: Progress | None) -> bool:
    return (progress is not None and progress.state == "failed") or (
        startup is not None
        and (startup.phase == "failed" or startup.error is not None or startup.training == "failed")
    )


def outcome(startup: StartupStatus | None, progress: Progress | None) -> str | None:
    """`"failed"`, `"done"` (training ended, or the boot ended with training off) or None."""
    if startup is None:
        return None
    if _is_failed(startup, progress):
        return "failed"
    if (progress is not None and progress.state == "done") or startup.training == "done":
        return "done"
    if startup.training == "off" and startup.phase in ("idle", "done"):
        return "done"
    return None


def render_failure(
    startup: StartupStatus, progress: Progress | None, group: GroupState | None = None
) -> list[str]:
    error = startup.error or Failure()
    failed = (name for name, s in startup.steps.items() if s.state == "failed")
    step = error.step or next(failed, None)
    if step is None and progress is not None and progress.state == "failed":
        step = "training"
    step = step or "unknown"
    message = str(error.message or (progress.error if progress else None) or "no message")
    lines = [f"FAILED at step {step!r}: {message}"]
    log_tail = (error.log_tail or "").rstrip()
    if log_tail:
        lines.append(f"  log tail (last {LOG_TAIL_LINES} lines):")
        lines += [f"    | {line}" for line in log_tail.splitlines()[-LOG_TAIL_LINES:]]
    # The VM's own hint knows the exact failure; ours add the commands to look closer.
    hint = error.hint
    vm = _vm(startup, group)
    hint_lines = [*(str(hint).splitlines() if hint else []), *hint_for(step, message, vm)]
    lines.append(f"  next: {hint_lines[0]}")
    lines += [f"        {line}" for line in hint_lines[1:]]
    return lines


def _not_reported(source: str, group: GroupState | None) -> list[str]:
    if group and group.phase != "running":
        return [f"The VM has not reported yet: {source} is missing or empty (GCE's view above)."]
    return [
        f"The VM has not reported yet: {source} is missing or empty.",
        "  A fresh VM reports within a few minutes of being created (installing the driver "
        "takes 5-15 more).",
        "  If nothing appears after 10 minutes, read the boot log on the serial console:",
        f"  $ {_vm(None, group).serial_console}",
    ]


def _silence(silence: str, group: GroupState | None) -> list[str]:
    """A VM that stopped reporting: GCE's view above says why when we have it."""
    if group and group.phase != "running":
        return [f"No report for {silence}: the VM is not running (GCE's view above)."]
    return [
        f"No report for {silence}: the VM may be stopped or being recreated (spot preemption, "
        "idle shutdown). GCE's view, and a start (the run resumes from the bucket):",
        "  $ kgg status --group GROUP   (`pulumi stack output instanceGroup`)",
        "  $ kgg start",
    ]


def render_status(
    startup: StartupStatus | None,
    progress: Progress | None,
    now: datetime,
    source: str = STATUS_OBJECT,
    group: GroupState | None = None,
) -> str:
    """The whole status report as text: a pure function of the two documents, GCE's view of the
    VM's group (when the caller could read it) and the time."""
    lines = render_group(group, now) if group else []
    if not startup:
        return "\n".join(lines + _not_reported(source, group))
    updated = parse_time(startup.updated)
    age = f", {format_duration((now - updated).total_seconds())} ago" if updated else ""
    lines.append(f"VM phase: {startup.phase} (updated {clock(updated)} UTC{age})")
    lines += _step_rows(startup.steps, now)
    gpus = startup.gpus
    lines.append(field("GPUs", ", ".join(gpus) if gpus else "none seen yet"))
    lines += render_notebook(
        startup.notebook_url, startup.tls_sha256, group.notebook if group else None
    )
    lines += render_training(startup, progress, now)
    lines += render_cost(startup.cost, startup.run_id)
    if _is_failed(startup, progress):
        lines += render_failure(startup, progress, group)
    else:
        newest = max(
            (t for t in (updated, parse_time(progress.updated if progress else None)) if t),
            default=None,
        )
        if newest and outcome(startup, progress) is None and now - newest > STALE_AFTER:
            lines += _silence(format_duration((now - newest).total_seconds()), group)
    return "\n".join(lines)


def _usd(value: float | None) -> str:
    return "" if value is None else f", ${value:.2f}"


def render_cost(cost: Cost | None, run_id: str | None) -> list[str]:
    """The VM's running time and what it cost, said plainly to be an estimate."""
    if cost is None or cost.vm_seconds is None:
        return []
    kind = "spot" if cost.spot else "on-demand"
    price = (
        f"${cost.hourly_usd:.2f}/h {kind}"
        if cost.hourly_usd is not None
        else f"no catalogue price for this {kind} VM"
    )
    since = parse_time(cost.since)
    lines = [
        field("Cost", f"estimate: catalogue price x running time ({price}); not your bill"),
        f"  this VM:  up {format_duration(cost.vm_seconds)}{_usd(cost.vm_usd)}",
    ]
    if run_id and cost.run_seconds is not None:
        lines.append(
            f"  run {run_id}: trained {format_duration(cost.run_seconds)}{_usd(cost.run_usd)}"
        )
    if cost.total_seconds is not None:
        start = f" since {since:%Y-%m-%d}" if since else ""
        lines.append(
            f"  all VMs{start}: {format_duration(cost.total_seconds)}{_usd(cost.total_usd)}"
        )
    return lines


def parse_doc(data: bytes | None) -> Doc | None:
    """A status document, or None when it is missing, empty or not a JSON object.

    Every string in it comes back printable (kgg.common.terminal): the bucket's writers are not
    trusted with the user's terminal."""
    if not data or not data.strip():
        return None
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    return clean_document(doc) if isinstance(doc, dict) and doc else None


def parse_startup(data: bytes | None) -> StartupStatus | None:
    """status/startup.json as the model, or None when it is missing or empty."""
    doc = parse_doc(data)
    return StartupStatus.from_json(doc) if doc else None


def parse_progress(data: bytes | None) -> Progress | None:
    """runs/<run-id>/progress.json as the model, or None when it is missing or not one."""
    return Progress.from_json(parse_doc(data))


def fetch_documents(bucket: str) -> tuple[StartupStatus | None, Progress | None]:
    """Reads status/startup.json and, for the run it names, runs/<run-id>/progress.json (each at
    most a document's size: storage.TooLargeError names a bigger one)."""
    startup = parse_startup(storage.read_limited(f"gs://{bucket}/{STATUS_OBJECT}"))
    run_id = startup.run_id if startup else None
    progress = None
    if run_id:
        progress = parse_progress(
            storage.read_limited(f"gs://{bucket}/{RUNS_PREFIX}{run_id}/{PROGRESS_FILE}")
        )
    return startup, progress


def watch(
    fetch: Callable[[], tuple[StartupStatus | None, Progress | None]],
    out: TextIO,
    interval: float = 30.0,
    max_seconds: float = 8 * 3600,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    clear: bool = False,
    source: str = STATUS_OBJECT,
    fetch_group: Callable[[], GroupState | None] | None = None,
) -> int:
    """Prints the status every `interval` seconds until training ends or fails, or `max_seconds`.
    `fetch_group` adds GCE's view of the VM's group to each refresh.

    Returns WATCH_EXIT_DONE, WATCH_EXIT_FAILED or WATCH_EXIT_GAVE_UP."""
    start = clock()
    last_good: tuple[StartupStatus | None, Progress | None] | None = None
    group: GroupState | None = None
    while True:
        problem = None
        try:
            last_good = fetch()
            group = fetch_group() if fetch_group else None
        except (storage.StorageError, GceError) as error:
            # A watch runs for hours over laptop networks: one failed read is not the VM's fault.
            problem = f"could not read the status this time ({error}); showing the last one"
        startup, progress = last_good or (None, None)
        if clear:
            out.write("\033[H\033[J")
        out.write(render_status(startup, progress, now(), source, group) + "\n")
        if problem:
            out.write(problem + "\n")
        result = outcome(startup, progress) if problem is None else None
        if result == "done":
            return WATCH_EXIT_DONE
        if result == "failed":
            return WATCH_EXIT_FAILED
        if clock() - start + interval > max_seconds:
            out.write(
                f"Stopped watching after {format_duration(clock() - start)}; "
                "the VM carries on. Run `kgg status --watch` again to follow it.\n"
            )
            return WATCH_EXIT_GAVE_UP
        out.write(f"(refreshing every {format_duration(interval)}; Ctrl-C stops watching)\n")
        out.flush()
        sleep(interval)
