"""Idle shutdown decision: a pure function of what Jupyter's API and the training job report.

The systemd timer on the VM runs `python -m kgg.agent idle-check` every few minutes; it
gathers Jupyter's `/api/status` and `/api/kernels`, the training job's state file and the boot
time, and calls `decide`. Only `decide` makes the call, so every rule is tested here without a VM.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from kgg.agent.config import STARTUP_UNIT, TRAINING_UNIT, Paths, VmSettings
from kgg.agent.job_state import JobState, read_job_state
from kgg.agent.system import System
from kgg.common.timestamps import parse_time

# Kernel states that mean a cell is running (or about to): never power off under them.
BUSY_KERNEL_STATES = frozenset({"busy", "starting", "restarting"})
# Training job states that count as work in progress. "waiting" (for data) is not: a VM that
# waits for an upload that never comes must still power off; the job's last data change
# counts as activity instead (see JobState.activity).
RUNNING_JOB_STATES = frozenset({"running"})


@dataclass(frozen=True)
class Decision:
    shutdown: bool
    reason: str


def decide(
    *,
    now: datetime,
    idle_minutes: int,
    booted: datetime,
    jupyter_status: Mapping[str, Any] | None,
    kernels: Sequence[Mapping[str, Any]] | None,
    job: JobState,
) -> Decision:
    """Shut down or not, with the reason.

    `jupyter_status`/`kernels` are None when Jupyter did not answer (not started, crashed): then
    only the boot time and the job count as activity, so a broken notebook cannot keep a GPU
    VM running forever. `booted` is a floor for the last activity: a fresh VM gets the full
    idle window before it can power off.
    """
    if idle_minutes <= 0:
        return Decision(False, "idle shutdown is off (idleShutdownMinutes = 0)")
    if job.active and job.state in RUNNING_JOB_STATES:
        return Decision(False, "the training job is running")
    busy = [k for k in kernels or () if k.get("execution_state") in BUSY_KERNEL_STATES]
    if busy:
        return Decision(False, f"{len(busy)} kernel(s) busy")
    connections = int((jupyter_status or {}).get("connections") or 0)
    connections += sum(int(k.get("connections") or 0) for k in kernels or ())
    if connections:
        return Decision(False, f"{connections} open notebook connection(s)")

    candidates: list[datetime | None] = [booted]
    if jupyter_status is not None:
        candidates.append(parse_time(jupyter_status.get("last_activity")))
        candidates.append(parse_time(jupyter_status.get("started")))
    candidates.extend(parse_time(k.get("last_activity")) for k in kernels or ())
    if job.active:
        candidates.append(job.activity)
    last = max(t for t in candidates if t is not None)
    idle_for = now - last
    window = timedelta(minutes=idle_minutes)
    minutes = int(idle_for.total_seconds() // 60)
    if idle_for < window:
        return Decision(False, f"idle for {minutes} of {idle_minutes} minutes")
    unreachable = " (Jupyter did not answer)" if jupyter_status is None else ""
    return Decision(
        True, f"no training and no notebook activity for {minutes} minutes{unreachable}"
    )


# --- gathering (impure): what `python -m kgg.agent idle-check` feeds into `decide` ---------------


def boot_time(now: datetime, proc_uptime: str = "/proc/uptime") -> datetime:
    """When the machine booted, from the kernel's uptime counter."""
    from pathlib import Path

    seconds = float(Path(proc_uptime).read_text().split()[0])
    return now - timedelta(seconds=seconds)


def fetch_jupyter(
    base_url: str, token: str, cafile: str | None, timeout: float = 10.0
) -> tuple[dict[str, Any] | None, list[dict[str, Any]] | None]:
    """Jupyter's /api/status and /api/kernels, or (None, None) when it does not answer.

    The certificate is self-signed for the VM's public address, so the name is not checked,
    but the connection is still pinned to that very certificate (cafile)."""
    import json
    import ssl
    import urllib.request

    context = ssl.create_default_context(cafile=cafile) if cafile else ssl.create_default_context()
    context.check_hostname = False
    if not cafile:
        context.verify_mode = ssl.CERT_NONE

    def get(path: str) -> Any:
        # Jupyter Server counts every authenticated API request as activity unless it says
        # no_track_activity: without it, each check would reset the idle time it measures.
        request = urllib.request.Request(
            f"{base_url.rstrip('/')}{path}?no_track_activity=1",
            headers={"Authorization": f"token {token}"},
        )
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return json.load(response)

    try:
        return get("/api/status"), get("/api/kernels")
    except (OSError, ValueError):
        return None, None


def idle_check(
    *,
    paths: Paths,
    settings: VmSettings,
    system: System,
    stop: Callable[[str], bool],
    log: logging.Logger,
    now: datetime,
) -> Decision:
    """The idle timer's check: gathers what `decide` needs, and stops the VM when it says so
    (`stop`, kgg/agent/stop.py: through its group, never a power-off that it would undo)."""
    if system.active_state(STARTUP_UNIT) == "activating":  # a oneshot unit runs as "activating"
        decision = Decision(False, "the startup script is still running")
        log.info("idle check: %s", decision.reason)
        return decision
    active = system.is_active(TRAINING_UNIT)
    token = paths.api_token.read_text().strip() if paths.api_token.is_file() else ""
    cafile = str(paths.tls_cert) if paths.tls_cert.is_file() else None
    jupyter_status, kernels = fetch_jupyter(
        f"https://127.0.0.1:{settings.notebook_port}", token, cafile
    )
    decision = decide(
        now=now,
        idle_minutes=settings.idle_shutdown_minutes,
        booted=boot_time(now, str(paths.root / "proc/uptime")),
        jupyter_status=jupyter_status,
        kernels=kernels,
        job=read_job_state(paths.job_state, active),
    )
    if decision.shutdown:
        log.info("idle check: %s; stopping the VM", decision.reason)
        stop(f"stopped: {decision.reason}")
    else:
        log.info("idle check: staying up: %s", decision.reason)
    return decision
