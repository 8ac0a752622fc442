"""The training service's state file (`training-job.json`): what the job does ("waiting",
"running", "done", "failed", "interrupted") and when it last saw activity. The idle check reads
it; the service and its data wait write it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from kgg.common.timestamps import parse_time


@dataclass(frozen=True)
class JobState:
    """The training job as the VM sees it: systemd says whether it runs, the state file says
    what it does and when it last saw activity."""

    active: bool
    state: str = "off"
    activity: datetime | None = None


def write_job_state(path: Path, state: str, activity: datetime | None = None) -> None:
    moment = activity or datetime.now(UTC)
    tmp = path.with_name(f"{path.name}.tmp")
    tmp.write_text(json.dumps({"state": state, "activity": moment.isoformat()}) + "\n")
    os.replace(tmp, path)


def read_job_state(path: Path, active: bool = False) -> JobState:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return JobState(active=active)
    if not isinstance(data, dict):
        return JobState(active=active)
    return JobState(
        active=active,
        state=str(data.get("state") or "off"),
        activity=parse_time(data.get("activity")),
    )
