"""`kgg sweep --local`: the trials of a sweep run here, one after another, under the same contract
Vertex AI gives a trial (kgg/job/trial.py): AIP_MODEL_DIR=<base>/<n>/model/, CLOUD_ML_TRIAL_ID=n
and a metric file per trial, the parameters appended as `--<parameterId>=<value>`, drawn at
random from the study (Vertex's RANDOM_SEARCH, in miniature), the best read from the metric
files. A rehearsal of a sweep on tiny data, or a small one on this machine's GPU.
"""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kgg.common.contract import CLI_NAME, METRIC_ID
from kgg.job import trial as trial_contract

LOG_SCALES = frozenset({"UNIT_LOG_SCALE", "UNIT_REVERSE_LOG_SCALE"})
Runner = Callable[..., subprocess.CompletedProcess[Any]]


def draw(study: Mapping[str, Any], rng: random.Random) -> dict[str, Any]:
    """One trial's parameters, each drawn at random from its spec (log scales uniformly in log)."""
    chosen: dict[str, Any] = {}
    for parameter in study["parameters"]:
        name = parameter["parameterId"]
        if "doubleValueSpec" in parameter:
            low, high = (float(parameter["doubleValueSpec"][k]) for k in ("minValue", "maxValue"))
            if parameter.get("scaleType") in LOG_SCALES:
                chosen[name] = math.exp(rng.uniform(math.log(low), math.log(high)))
            else:
                chosen[name] = rng.uniform(low, high)
        elif "integerValueSpec" in parameter:
            low, high = (int(parameter["integerValueSpec"][k]) for k in ("minValue", "maxValue"))
            chosen[name] = rng.randint(low, high)
        elif "discreteValueSpec" in parameter:
            chosen[name] = rng.choice(parameter["discreteValueSpec"]["values"])
        else:
            chosen[name] = rng.choice(parameter["categoricalValueSpec"]["values"])
    return chosen


def arguments(chosen: Mapping[str, Any]) -> list[str]:
    """`--<parameterId>=<value>`, as Vertex appends them to the container's arguments."""
    return [f"--{name}={value}" for name, value in chosen.items()]


@dataclass(frozen=True)
class LocalTrial:
    trial_id: str
    parameters: Mapping[str, Any]
    exit_code: int
    score: float | None
    out: str  # the trial's run folder: a local path or gs:// prefix


def environment(base: str, trial_id: str, metrics: Path) -> dict[str, str]:
    """What Vertex gives trial `trial_id` of a tuning job whose base output folder is `base` (a
    local folder or a gs:// prefix); its metric file goes to the local folder `metrics`."""
    return {
        trial_contract.MODEL_DIR: f"{base}/{trial_id}/model/",
        trial_contract.CHECKPOINT_DIR: f"{base}/{trial_id}/checkpoints/",
        trial_contract.TENSORBOARD_DIR: f"{base}/{trial_id}/logs/",
        trial_contract.TRIAL_ID: trial_id,
        trial_contract.METRIC_FILE: str(metrics / f"{trial_id}.metrics"),
    }


def run_trials(
    study: Mapping[str, Any],
    job_args: Sequence[str],
    base: str | Path,
    trials: int,
    seed: int | None = None,
    run: Runner | None = None,
    report: Callable[[str], None] = print,
    metrics: Path | None = None,
) -> list[LocalTrial]:
    """Runs `python -m kgg <job_args> --<param>=<value>...` once per trial, in order, each in
    <base>/<n>/; the metric files go to `metrics` (default <base>/.hypertune, base local)."""
    base = str(base).rstrip("/")
    metrics = metrics or Path(base) / ".hypertune"
    rng = random.Random(seed)
    done = []
    for number in range(1, trials + 1):
        trial_id = str(number)
        chosen = draw(study, rng)
        env = {**os.environ, **environment(base, trial_id, metrics)}
        report(f"trial {trial_id}/{trials}: {' '.join(arguments(chosen))}")
        argv = [sys.executable, "-m", CLI_NAME, *job_args, *arguments(chosen)]
        code = (run or subprocess.run)(argv, env=env, check=False).returncode
        reports = trial_contract.read_reports(env[trial_contract.METRIC_FILE])
        values = [r[METRIC_ID] for r in reports if METRIC_ID in r]
        score = float(values[-1]) if values and code == 0 else None
        done.append(LocalTrial(trial_id, chosen, code, score, f"{base}/{trial_id}"))
        shown = f"micro-F1 {score:.4f}" if score is not None else f"no score (exit {code})"
        report(f"trial {trial_id}: {shown}")
    return done


def best(trials: Sequence[LocalTrial]) -> LocalTrial | None:
    scored = [t for t in trials if t.score is not None]
    return max(scored, key=lambda t: t.score or 0.0) if scored else None
