"""The job's side of Vertex AI's contract (docs/CONTRACTS.md, "The trial contract"), stdlib only:
what the environment says about where a run writes and which trial it is, and the metric report
Vertex's tuner reads.

Where results go. With a job's `baseOutputDirectory` set, Vertex gives the container
AIP_MODEL_DIR=<base>/model/, AIP_CHECKPOINT_DIR=<base>/checkpoints/ and
AIP_TENSORBOARD_LOG_DIR=<base>/logs/, and a tuning job's trial the same under <base>/<trial-id>/
with CLOUD_ML_TRIAL_ID. The job writes its usual run layout (model.keras, metrics.json,
progress.json, tensorboard/, backup/, ...) in the folder above AIP_MODEL_DIR: kgg's
baseOutputDirectory is gs://BUCKET/runs/<run-id>/, so a Vertex run's folder is where a VM run's
would be, and a trial's is gs://BUCKET/runs/<sweep-id>/<trial-id>/; `runs`, `pull`, `logs` and
`tensorboard` read them unchanged. The three AIP_* folders themselves stay empty: Vertex reads
model/ only when a pipeline uploads a model, logs/ only for a Vertex TensorBoard the jobs do not
name, and the job's checkpoints are its backup/ (a restarted worker gets the same variables, so
the same folder, and resumes from it).

The metric. `MetricReporter` writes what cloudml-hypertune 0.1.0.dev6 writes (tests compare the
two byte for byte): after each report it rewrites $CLOUD_ML_HP_METRIC_FILE (default
/tmp/hypertune/output.metrics) in place with this process's last 100 reports, one JSON object a
line, keys sorted: `timestamp` (seconds, a number), `trial` ($CLOUD_ML_TRIAL_ID, "0" when unset),
the metric tag with the value, `global_step` and `checkpoint_path`, those as strings. The library
is not a dependency of the job: an sdist of 2019 with setup.py only, for 70 lines.
"""

from __future__ import annotations

import collections
import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kgg.common.contract import METRIC_ID, VERTEX_MODEL_DIR_ENV, vertex_run_folder

DEFAULT_METRIC_FILE = "/tmp/hypertune/output.metrics"
# cloudml-hypertune keeps this many reports in the file.
MAX_REPORTS = 100

MODEL_DIR = VERTEX_MODEL_DIR_ENV
CHECKPOINT_DIR, TENSORBOARD_DIR = "AIP_CHECKPOINT_DIR", "AIP_TENSORBOARD_LOG_DIR"
TRIAL_ID, METRIC_FILE = "CLOUD_ML_TRIAL_ID", "CLOUD_ML_HP_METRIC_FILE"


@dataclass(frozen=True)
class VertexRun:
    """What Vertex told this process, read once from the environment."""

    out: str  # the run's folder (the job's --out): the folder above AIP_MODEL_DIR
    checkpoint_dir: str | None
    tensorboard_dir: str | None
    trial_id: str | None
    metric_file: Path


def from_environment(env: Mapping[str, str] | None = None) -> VertexRun | None:
    """The Vertex contract of this process, or None when it does not run under Vertex (no
    AIP_MODEL_DIR and no trial id). A contract that does not hold raises ValueError naming the
    variable and its value."""
    env = os.environ if env is None else env
    model_dir, trial_id = env.get(MODEL_DIR) or None, env.get(TRIAL_ID) or None
    if model_dir is None:
        if trial_id is not None:
            raise ValueError(
                f"{TRIAL_ID}={trial_id!r} but no {MODEL_DIR}: the tuning job's "
                "trialJobSpec needs a baseOutputDirectory"
            )
        return None
    out = vertex_run_folder(model_dir)
    if out is None or not (model_dir.startswith("gs://") or model_dir.startswith("/")):
        raise ValueError(
            f"{MODEL_DIR}={model_dir!r} is not a gs:// or absolute folder ending "
            "in /model/, as Vertex sets it from baseOutputDirectory"
        )
    run = VertexRun(
        out=out,
        checkpoint_dir=env.get(CHECKPOINT_DIR) or None,
        tensorboard_dir=env.get(TENSORBOARD_DIR) or None,
        trial_id=trial_id,
        metric_file=Path(env.get(METRIC_FILE) or DEFAULT_METRIC_FILE),
    )
    if trial_id is not None and run.out.rsplit("/", 1)[-1] != trial_id:
        raise ValueError(
            f"{MODEL_DIR}={model_dir!r} is not the folder of trial {trial_id} "
            f"({TRIAL_ID}): Vertex puts it under <base>/{trial_id}/"
        )
    return run


class MetricReporter:
    """Reports for Vertex's tuner, in cloudml-hypertune's file format (module docstring)."""

    def __init__(self, metric_file: Path | str, trial_id: str | None = None) -> None:
        self.metric_file = Path(metric_file)
        self.trial_id = trial_id if trial_id is not None else "0"
        self._reports: collections.deque[dict[str, object]] = collections.deque(maxlen=MAX_REPORTS)

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> MetricReporter:
        env = os.environ if env is None else env
        return cls(env.get(METRIC_FILE) or DEFAULT_METRIC_FILE, env.get(TRIAL_ID) or None)

    def report(
        self, value: float, *, step: int = 0, tag: str = METRIC_ID, checkpoint_path: str = ""
    ) -> None:
        """One report of `tag` = `value` at `step`; the file then holds the last 100."""
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"metric {tag} = {value!r} is not a finite number")
        self._reports.append(
            {
                "timestamp": time.time(),
                "trial": str(self.trial_id),
                tag: str(number),
                "global_step": str(int(step) if step else 0),
                "checkpoint_path": checkpoint_path,
            }
        )
        self.metric_file.parent.mkdir(parents=True, exist_ok=True)
        # Rewritten in place, as the library does: Vertex's reader was built against that.
        with self.metric_file.open("w") as out:
            for report in self._reports:
                out.write(json.dumps(report, sort_keys=True) + "\n")


def read_reports(metric_file: Path | str) -> list[dict[str, Any]]:
    """The reports in a metric file, oldest first (what `sweep --local` picks the best from);
    lines that are not JSON objects are skipped."""
    path = Path(metric_file)
    if not path.exists():
        return []
    reports = []
    for line in path.read_text().splitlines():
        try:
            report = json.loads(line)
        except ValueError:
            continue
        if isinstance(report, dict):
            reports.append(report)
    return reports
