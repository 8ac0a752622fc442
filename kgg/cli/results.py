"""`kgg runs` and `kgg pull`: the training runs under gs://BUCKET/runs/, and their files.

A run's summary comes from its `metrics.json` (written when the run ends) or, while it is still
running, from its `progress.json`. Its score is the headline of metrics.json: the held-out split
when the run kept one (`scored_on`), else validation; a running run shows validation.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from kgg.common import storage
from kgg.common.contract import (
    BACKUP_DIR,
    COST_OBJECT,
    METRIC_ID,
    METRICS_FILE,
    PROGRESS_FILE,
    RUNS_PREFIX,
)
from kgg.common.documents import Progress
from kgg.common.errors import UserError
from kgg.common.terminal import printable
from kgg.common.timestamps import format_duration

RUNS_FOLDER = "runs"  # where `pull` puts a run by default: DIR/RUN, as in the bucket
LATEST = "latest"
MICRO_F1_KEYS = (METRIC_ID, "val_micro_f1", "test_micro_f1", "f1_micro")
ACCURACY_KEYS = ("accuracy", "val_accuracy", "test_accuracy")
SCORED_ON = ("holdout", "validation")  # metrics.json's `scored_on`: the set the scores are on
# What `pull` downloads of one run at most (without backup/): a run writes a few hundred MB.
MAX_PULL_BYTES = 20 * 10**9


class RunNotFoundError(UserError, LookupError):
    """The asked-for run is not in the bucket; the message lists the runs that are."""


@dataclass(frozen=True)
class RunSummary:
    """One run as `runs` lists it."""

    run_id: str
    state: str
    micro_f1: float | None
    accuracy: float | None
    updated: datetime | None
    files: int
    size: int
    scored_on: str | None = None  # holdout | validation: the set micro_f1 and accuracy are on


def _number(doc: dict[str, Any], keys: tuple[str, ...]) -> float | None:
    """The first of `keys` in the document or in its `metrics` sub-dict that holds a number."""
    scopes = [doc]
    if isinstance(doc.get("metrics"), dict):
        scopes.append(doc["metrics"])
    for key in keys:
        for scope in scopes:
            value = scope.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
    return None


def summarize_run(
    run_id: str,
    metrics: dict[str, Any] | None,
    progress: Progress | None,
    updated: datetime | None = None,
    files: int = 0,
    size: int = 0,
) -> RunSummary:
    """A run's summary from its final metrics, else its progress: a pure function of the docs."""
    metrics = metrics if isinstance(metrics, dict) else None
    scores = progress.metrics if progress else None
    if metrics is not None:
        state = str(metrics.get("state") or (progress.state if progress else None) or "done")
    elif progress is not None:
        state = progress.state or "running"
    else:
        state = "unknown"
    docs = [d for d in (metrics, scores) if d is not None]
    micro_f1 = next((v for d in docs if (v := _number(d, MICRO_F1_KEYS)) is not None), None)
    accuracy = next((v for d in docs if (v := _number(d, ACCURACY_KEYS)) is not None), None)
    scored_on: str | None = None
    if micro_f1 is not None or accuracy is not None:
        # Runs from before the held-out split, and progress while running, are on validation.
        # The documents are the bucket's text: only the two names the job writes are shown.
        finals = [d for d in (metrics, scores) if d is not None]
        recorded = [
            on for d in finals if isinstance(on := d.get("scored_on"), str) and on in SCORED_ON
        ]
        scored_on = recorded[0] if recorded else "validation"
    return RunSummary(run_id, state, micro_f1, accuracy, updated, files, size, scored_on)


def read_document(url: str) -> Any | None:
    """A JSON document of the bucket, or None (with a warning on stderr) when it is missing,
    not JSON or bigger than a document: one bad run must not hide the others."""
    try:
        data = storage.read_limited(url)
        return None if data is None else json.loads(data)
    except (ValueError, storage.TooLargeError) as error:
        reason = str(error) if isinstance(error, storage.TooLargeError) else f"not JSON: {error}"
        print(printable(f"warning: skipped {url} ({reason})"), file=sys.stderr)
        return None


def runs_url(bucket: str) -> str:
    return f"gs://{bucket}/{RUNS_PREFIX}".removesuffix("/")


def runs_listing(bucket: str) -> dict[str, list[storage.ObjectInfo]]:
    """One listing of runs/: each run's objects, named relative to the run's folder."""
    grouped: dict[str, list[storage.ObjectInfo]] = {}
    for info in storage.list_objects(runs_url(bucket)):
        run_id, sep, rest = info.name.partition("/")
        if sep:
            grouped.setdefault(run_id, []).append(
                storage.ObjectInfo(rest, info.size, info.md5, info.updated)
            )
    return grouped


def _order(run_id: str, infos: list[storage.ObjectInfo]) -> tuple[Any, ...]:
    """Oldest first, by a run's newest object; runs without a time first."""
    updated = max((i.updated for i in infos if i.updated), default=None)
    return (updated is None, updated or 0, run_id)


def list_runs(bucket: str) -> list[RunSummary]:
    """Every run in the bucket, oldest first (by its newest object)."""
    grouped = runs_listing(bucket)
    summaries = []
    for run_id, infos in grouped.items():
        names = {info.name for info in infos}
        base = f"{runs_url(bucket)}/{run_id}"
        metrics = read_document(f"{base}/{METRICS_FILE}") if METRICS_FILE in names else None
        progress = (
            Progress.from_json(read_document(f"{base}/{PROGRESS_FILE}"))
            if PROGRESS_FILE in names
            else None
        )
        updated = max((i.updated for i in infos if i.updated), default=None)
        summaries.append(
            summarize_run(
                run_id, metrics, progress, updated, len(infos), sum(i.size for i in infos)
            )
        )
    return sorted(summaries, key=lambda s: (s.updated is None, s.updated or 0, s.run_id))


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def run_costs(bucket: str) -> dict[str, tuple[float, float | None]]:
    """Each run's training time and its estimated cost from the VM's ledger (the bucket's
    text: numbers only, anything else dropped)."""
    ledger = read_document(f"gs://{bucket}/{COST_OBJECT}") if bucket else None
    runs = ledger.get("runs") if isinstance(ledger, dict) else None
    costs: dict[str, tuple[float, float | None]] = {}
    for run_id, entry in (runs if isinstance(runs, dict) else {}).items():
        entry = entry if isinstance(entry, dict) else {}
        seconds = _real(entry.get("seconds"))
        if seconds is not None:
            costs[str(run_id)] = (seconds, _real(entry.get("usd")))
    return costs


def _real(value: Any) -> float | None:
    """A JSON number as a float; None for anything else (a bool is not a number here)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _cost_cells(cost: tuple[float, float | None] | None) -> tuple[str, str]:
    if cost is None:
        return "-", "-"
    seconds, usd = cost
    return format_duration(seconds), "-" if usd is None else f"{usd:.2f}"


def render_runs(
    runs: list[RunSummary],
    bucket: str,
    current: str | None = None,
    costs: dict[str, tuple[float, float | None]] | None = None,
) -> str:
    """The `runs` table: one line per run, newest last; `current` (the VM's run) is starred.
    `costs` (from the VM's ledger) adds the training time and its estimated cost."""
    if not runs:
        return (
            f"No runs in {runs_url(bucket)}/ yet. The VM starts one once the data is uploaded "
            "(`kgg status` shows where it stands)."
        )
    header = ("run", "state", "micro-F1", "accuracy", "scored on", "updated (UTC)", "files", "MB",
              "trained", "~USD")  # fmt: skip
    costs = costs or {}
    # Run ids are object names and states come from the runs' documents: the bucket's text.
    rows = [header] + [
        (
            printable(f"{run.run_id} *" if run.run_id == current else run.run_id),
            printable(run.state),
            _score(run.micro_f1),
            _score(run.accuracy),
            printable(run.scored_on or "-"),
            run.updated.strftime("%Y-%m-%d %H:%M") if run.updated else "-",
            str(run.files),
            f"{run.size / 1e6:.1f}",
            *_cost_cells(costs.get(run.run_id)),
        )
        for run in runs
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows
    ]
    if current in {run.run_id for run in runs}:
        lines.append("* the VM's current run (kgg-run-id)")
    if costs:
        lines.append("trained, ~USD: the job's running time x the catalogue price (an estimate)")
    lines.append(f"pull one with: kgg pull RUN (or `pull {LATEST}`)")
    return "\n".join(lines)


def resolve_run(
    bucket: str, run: str, grouped: dict[str, list[storage.ObjectInfo]] | None = None
) -> str:
    """`latest` -> the most recently updated run; any other name must exist in the bucket.
    `grouped`: runs_listing(bucket), when the caller has it."""
    grouped = runs_listing(bucket) if grouped is None else grouped
    known = sorted(grouped, key=lambda run_id: _order(run_id, grouped[run_id]))
    if run == LATEST:
        if not known:
            raise RunNotFoundError(f"no runs in {runs_url(bucket)}/ yet; nothing to pull")
        return known[-1]
    if run not in known:
        listing = printable(", ".join(known)) if known else "none yet"
        raise RunNotFoundError(
            f"run {run!r} is not in {runs_url(bucket)}/; runs there: {listing} (or `{LATEST}`)"
        )
    return run


def refuse_oversized(
    url: str, listing: Iterable[storage.ObjectInfo], max_bytes: int, what: str, fix: str
) -> None:
    """TooLargeError when the objects of `listing` (under `url`) hold more than `max_bytes`: a
    bucket writer must not fill the laptop's disk through `pull` or the TensorBoard mirror."""
    size = sum(info.size for info in listing)
    if size > max_bytes:
        raise storage.TooLargeError(
            printable(
                f"{url}/ holds {size / 1e9:.1f} GB to download, more than {what} takes "
                f"({max_bytes / 1e9:g} GB): a run writes a few hundred MB, so check who can "
                f"write the bucket; {fix}"
            )
        )


def pull_run(
    bucket: str,
    run: str,
    to: str | os.PathLike[str] | None = None,
    workers: int = 8,
    progress: bool = True,
    max_bytes: int = MAX_PULL_BYTES,
) -> tuple[str, Path, storage.SyncStats]:
    """Downloads runs/<run>/ (model, metrics, plots, submission.csv) to `<to>/<run-id>`.

    The resume checkpoints under backup/ (hundreds of MB while a run trains) are left behind:
    they serve only the VM's own restart.

    `to` defaults to ./runs, so runs pulled side by side never mix.

    Files already there with the same checksum are skipped, so pulling a running run again only
    fetches what changed. Returns the run id, the local folder and what was copied."""
    grouped = runs_listing(bucket)  # one listing: it resolves the run and lists its files
    run_id = resolve_run(bucket, run, grouped)
    # The run id is an object name: `..` must not turn `--to` into its parent.
    target = storage.local_path(to if to is not None else RUNS_FOLDER, run_id)
    source = f"{runs_url(bucket)}/{run_id}"
    wanted = [info for info in grouped[run_id] if not info.name.startswith(f"{BACKUP_DIR}/")]
    refuse_oversized(source, wanted, max_bytes, "pull", "to pull it anyway: --max-gb N")
    stats = storage.download_tree(
        source, target, workers=workers, progress=progress, listing=wanted
    )
    return run_id, target, stats


def render_pull(run_id: str, target: Path, stats: storage.SyncStats) -> str:
    lines = [
        f"run {run_id} -> {target}: downloaded {stats.copied} files "
        f"({stats.bytes / 1e6:.1f} MB{', ' + stats.rate() if stats.copied else ''}), "
        f"{stats.skipped} already up to date"
    ]
    if stats.refused:
        lines.append(
            f"  refused {stats.refused} objects whose names lead outside {target} (warnings "
            "above); this tool never writes such names: check who can write the bucket"
        )
    for name in (METRICS_FILE, "submission.csv", PROGRESS_FILE):
        path = target / name
        if path.is_file():
            lines.append(f"  {path}")
    # The run id (and so the folder) is an object name: the bucket's text.
    return "\n".join(printable(line) for line in lines)
