"""The Vertex AI side of `kgg runs`, `kgg status` and `kgg pull`: the stack's jobs (those labelled
app=keras-gpu-gcp and stack=<stack>, kgg/cli/vertex_spec.py), where each ran, its state and its
queue time (startTime - createTime), its estimated cost (kgg/cli/vertex_cost.py: the $/h of its
machine times its real start-to-end, a sweep's summed over its trials), a sweep's trials and its
best; and a sweep's best trial pulled from the bucket (each trial's metrics.json in
gs://BUCKET/runs/SWEEP/TRIAL/, so `pull` needs no Vertex call).

Names come back with the project NUMBER (Vertex's), so runs are matched by their `run` label,
never by name.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kgg.cli import vertex_cost
from kgg.cli.vertex_api import CUSTOM_JOBS, TUNING_JOBS, Vertex, VertexError
from kgg.cli.vertex_spec import APP_LABEL, SpecError
from kgg.common.contract import METRIC_ID, METRICS_FILE
from kgg.common.terminal import printable

FINAL = frozenset(
    {
        "JOB_STATE_SUCCEEDED",
        "JOB_STATE_FAILED",
        "JOB_STATE_CANCELLED",
        "JOB_STATE_EXPIRED",
        "JOB_STATE_PARTIALLY_SUCCEEDED",
    }
)


@dataclass(frozen=True)
class Trial:
    trial_id: str
    state: str
    parameters: Mapping[str, Any]
    score: float | None
    started: datetime | None = None
    ended: datetime | None = None


@dataclass(frozen=True)
class VertexRun:
    """One job of the stack as `runs` shows it."""

    run_id: str
    kind: str  # submit | sweep
    name: str
    state: str
    created: datetime | None
    started: datetime | None
    ended: datetime | None
    trials: tuple[Trial, ...] = ()
    max_trials: int = 0
    # $/h of one run's (a sweep: one trial's) machines; None when the catalogue lacks a price.
    usd_per_hour: float | None = None

    @property
    def done(self) -> bool:
        return self.state in FINAL

    def queued(self, now: datetime) -> timedelta | None:
        """How long it waited for its machine: until it started, or until now."""
        if self.created is None:
            return None
        if self.started is None:
            return None if self.done else now - self.created
        return self.started - self.created

    def billed_spans(self) -> list[tuple[datetime, datetime | None]]:
        """When its machines ran: from its start to its end (None: still running); a sweep's
        trials each from theirs (a trial still open when the sweep ended stops with it)."""
        if self.kind == "sweep":
            return [(t.started, t.ended or self.ended) for t in self.trials if t.started]
        return [(self.started, self.ended)] if self.started else []

    def cost(self, now: datetime) -> float | None:
        """Estimated $ so far; None before it starts or without a price."""
        spans = self.billed_spans()
        if self.usd_per_hour is None or not spans:
            return None
        seconds = sum(max(0.0, ((end or now) - start).total_seconds()) for start, end in spans)
        return self.usd_per_hour * seconds / 3600

    @property
    def best(self) -> Trial | None:
        scored = [t for t in self.trials if t.score is not None]
        return max(scored, key=lambda t: t.score or 0.0) if scored else None


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return None


def _trial(raw: Mapping[str, Any]) -> Trial:
    parameters = {
        str(p.get("parameterId")): p.get("value")
        for p in raw.get("parameters") or []
        if isinstance(p, dict)
    }
    score = None
    for metric in (raw.get("finalMeasurement") or {}).get("metrics") or []:
        if metric.get("metricId") == METRIC_ID and isinstance(metric.get("value"), int | float):
            score = float(metric["value"])
    return Trial(
        str(raw.get("id", "?")), str(raw.get("state", "?")), parameters, score,
        _time(raw.get("startTime")), _time(raw.get("endTime")),
    )  # fmt: skip


def parse_job(raw: Mapping[str, Any], kind: str) -> VertexRun:
    labels = raw.get("labels") or {}
    return VertexRun(
        run_id=str(labels.get("run") or str(raw.get("name", "?")).rsplit("/", 1)[-1]),
        kind=kind,
        name=str(raw.get("name", "")),
        state=str(raw.get("state", "JOB_STATE_UNSPECIFIED")),
        created=_time(raw.get("createTime")),
        started=_time(raw.get("startTime")),
        ended=_time(raw.get("endTime")),
        trials=tuple(_trial(t) for t in raw.get("trials") or [] if isinstance(t, dict)),
        max_trials=int(raw.get("maxTrialCount") or 0),
        usd_per_hour=vertex_cost.usd_per_hour(raw, vertex_cost.region_of(str(raw.get("name", "")))),
    )


def stack_filter(stack: str) -> str:
    return f'labels.app="{APP_LABEL}" AND labels.stack="{stack}"'


def list_jobs(vertex: Vertex, parent: str, stack: str) -> list[VertexRun]:
    """The stack's runs and sweeps, oldest first."""
    found = [
        parse_job(job, "submit") for job in vertex.list(parent, CUSTOM_JOBS, stack_filter(stack))
    ]
    found += [
        parse_job(job, "sweep") for job in vertex.list(parent, TUNING_JOBS, stack_filter(stack))
    ]
    epoch = datetime.min.replace(tzinfo=UTC)
    return sorted(found, key=lambda run: (run.created or epoch, run.run_id))


def _minutes(value: timedelta | None) -> str:
    if value is None:
        return "-"
    seconds = max(0, int(value.total_seconds()))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else (
        f"{seconds // 60}m{seconds % 60:02d}s")  # fmt: skip


def _state(state: str) -> str:
    return state.removeprefix("JOB_STATE_").lower()


def _cost(run: VertexRun, now: datetime) -> str:
    """`$1.23` so far, `-` before it starts, `?` once it runs without a price."""
    if not run.billed_spans():
        return "-"
    cost = run.cost(now)
    return "?" if cost is None else vertex_cost.dollars(cost)


def render_jobs(runs: Iterable[VertexRun], now: datetime) -> str:
    """The Vertex AI section: one line per run or sweep, then a sweep's trials and best."""
    runs = list(runs)
    if not runs:
        return "Vertex AI: no runs or sweeps of this stack (`kgg submit`, `kgg sweep`)."
    header = ("run", "where", "state", "queued", "ran", "cost", "trials", "best micro-F1")
    rows = [header]
    for run in runs:
        ran = None
        if run.started is not None:
            ran = (run.ended or now) - run.started
        best = run.best
        best_cell = f"{best.score:.4f} (trial {printable(best.trial_id)})" if best else "-"
        trials = f"{len(run.trials)}/{run.max_trials}" if run.kind == "sweep" else "-"
        rows.append((
            printable(run.run_id), f"vertex {run.kind}", printable(_state(run.state)),
            _minutes(run.queued(now)), _minutes(ran), _cost(run, now), trials,
            best_cell,
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["Vertex AI:"] + [
        "  " + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
        for row in rows
    ]
    for run in runs:
        for trial in run.trials:
            score = f"{trial.score:.4f}" if trial.score is not None else "-"
            params = ", ".join(f"{k}={v}" for k, v in trial.parameters.items())
            star = " *" if run.best is trial else ""
            lines.append(
                printable(f"    {run.run_id} trial {trial.trial_id}: {trial.state.lower()}, "
                          f"micro-F1 {score}, {params}{star}")
            )  # fmt: skip
    if any(_cost(run, now) == "?" for run in runs):
        lines.append(f"  ? no price for its machine in the catalogue's {vertex_cost.PRICES}")
    if any(run.kind == "sweep" for run in runs):
        lines.append(
            "  * a sweep's best trial: `kgg pull SWEEP` fetches it (--all-trials: every one)"
        )
    return "\n".join(lines)


def print_section(
    outputs: Callable[[], dict[str, Any]], only_active: bool = False, now: datetime | None = None
) -> None:
    """Prints the stack's Vertex AI jobs when the stack names a project and region; a call that
    fails says why on stderr and leaves the bucket's view shown."""
    stack = outputs()
    project, region, name = stack.get("project"), stack.get("region"), stack.get("stack")
    if not (project and region and name):
        return
    try:
        vertex = Vertex.from_environment(str(region))
        runs = list_jobs(vertex, f"projects/{project}/locations/{region}", str(name))
    except VertexError as error:
        print(f"(no Vertex AI view: {error})", file=sys.stderr)
        return
    if only_active:
        runs = [run for run in runs if not run.done]
        if not runs:
            return
    print(render_jobs(runs, now or datetime.now(UTC)))


# --- pull: a sweep's best trial ----------------------------------------------------------------
def trial_scores(bucket: str, sweep: str, grouped: Mapping[str, list[Any]]) -> dict[str, float]:
    """The micro-F1 of each finished trial of `sweep` (its TRIAL/metrics.json); {} when `sweep`
    is not a sweep (a run has its metrics.json at its top)."""
    from kgg.cli.results import MICRO_F1_KEYS, _number, read_document, runs_url

    names = {info.name for info in grouped.get(sweep, [])}
    if METRICS_FILE in names:
        return {}
    scores = {}
    for name in sorted(names):
        trial, _, rest = name.partition("/")
        if rest == METRICS_FILE:
            document = read_document(f"{runs_url(bucket)}/{sweep}/{name}")
            score = _number(document, MICRO_F1_KEYS) if isinstance(document, dict) else None
            if score is not None:
                scores[trial] = score
    return scores


def pull_best(
    bucket: str,
    sweep: str,
    to: str | os.PathLike[str] | None,
    workers: int,
    progress: bool,
    max_bytes: int,
    grouped: Mapping[str, list[Any]],
) -> tuple[str, Path, Any] | None:
    """Downloads the best trial of a sweep to `<to>/<sweep>/<trial>`; None when `sweep` holds no
    scored trial (a run, or a sweep still without results)."""
    from kgg.cli.results import BACKUP_DIR, RUNS_PREFIX, refuse_oversized, runs_url
    from kgg.common import storage

    scores = trial_scores(bucket, sweep, grouped)
    if not scores:
        return None
    best = max(scores, key=lambda trial: scores[trial])
    prefix = f"{best}/"
    wanted = [
        storage.ObjectInfo(info.name.removeprefix(prefix), info.size, info.md5, info.updated)
        for info in grouped[sweep]
        if info.name.startswith(prefix) and not info.name.startswith(f"{prefix}{BACKUP_DIR}/")
    ]
    source = f"{runs_url(bucket)}/{sweep}/{best}"
    refuse_oversized(source, wanted, max_bytes, "pull", "to pull it anyway: --max-gb N")
    if not all(part and part not in (".", "..") for part in (sweep, best)):
        raise SpecError(f"trial folder {sweep}/{best!r} is not a plain name")
    target = storage.local_path(to if to is not None else RUNS_PREFIX, f"{sweep}/{best}")
    stats = storage.download_tree(
        source, target, workers=workers, progress=progress, listing=wanted
    )
    return f"{sweep}/{best}", target, stats
