"""`status/startup.json`: what the VM reports about its boot and its services, as one typed model
for its three users (and, at the end, the training job's `runs/<run-id>/progress.json`). The
startup script's helper (kgg/startup/bootstrap.py) runs it with the image's own python3 before any
environment exists, the VM agent (kgg/agent) imports it, and `kgg status` reads
it. Hence: stdlib only, Python 3.10 (Ubuntu 22.04's python3), and tolerant reading (the laptop
trusts nothing from the bucket).

Changes are `KEY=VALUE` words, the form the shell passes: `phase=driver`, `step.NAME=STATE`
(stamps started/finished), `detail.NAME=TEXT`, `error=` (clears it), `error.FIELD=TEXT`,
`gpus=ONE PER LINE`, `cost.FIELD=NUMBER` (and `cost.spot=true|false`, `cost.since=TIME`),
and the plain fields below.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VERSION = 1
STEPS = ("preflight", "driver", "python", "gpu-check", "jupyter", "training", "idle")
STEP_STATES = ("pending", "running", "done", "skipped", "failed")
PLAIN_FIELDS = ("phase", "training", "notebook_url", "tls_sha256", "run_id", "instance", "zone")
ERROR_FIELDS = ("step", "message", "log_tail", "hint")
# The running time and its estimated cost (the ledger's summary, `cost.FIELD=NUMBER` changes).
COST_FIELDS = ("hourly_usd", "vm_seconds", "vm_usd", "run_seconds", "run_usd", "total_seconds",
               "total_usd")  # fmt: skip


class ChangeError(ValueError):
    """A change word the document does not know."""


def now_text() -> str:
    """UTC to the second, the documents' timestamp format."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if value == value and abs(value) < 1e12 else None  # no NaN, no inf


@dataclass
class Step:
    state: str = "pending"
    started: str | None = None
    finished: str | None = None
    detail: str | None = None

    @classmethod
    def from_json(cls, data: Any) -> Step:
        data = data if isinstance(data, dict) else {}
        state = str(data.get("state") or "pending")
        return cls(
            state=state if state in STEP_STATES else "pending",
            started=_text(data.get("started")),
            finished=_text(data.get("finished")),
            detail=_text(data.get("detail")),
        )


@dataclass
class Failure:
    step: str | None = None
    message: str | None = None
    log_tail: str | None = None
    hint: str | None = None


@dataclass
class Cost:
    """What the VM has cost, estimated: catalogue price x running hours (on-demand or spot,
    `spot`), for this VM since it booted, for its run's training, and for every VM of the
    stack since its first boot (`since`)."""

    hourly_usd: float | None = None
    spot: bool = False
    vm_seconds: float | None = None
    vm_usd: float | None = None
    run_seconds: float | None = None
    run_usd: float | None = None
    total_seconds: float | None = None
    total_usd: float | None = None
    since: str | None = None

    @classmethod
    def from_json(cls, data: Any) -> Cost | None:
        if not isinstance(data, dict):
            return None
        numbers = {name: _number(data.get(name)) for name in COST_FIELDS}
        return cls(spot=data.get("spot") is True, since=_text(data.get("since")), **numbers)


@dataclass
class StartupStatus:
    """The boot steps, what the VM serves, and the last error. Fields beyond the steps are
    written by whoever knows them (the script, the agent, the training service)."""

    updated: str | None = None
    phase: str = "driver"
    steps: dict[str, Step] = field(default_factory=lambda: {name: Step() for name in STEPS})
    gpus: list[str] = field(default_factory=list)
    notebook_url: str | None = None
    tls_sha256: str | None = None
    run_id: str | None = None
    instance: str | None = None
    zone: str | None = None
    training: str = "off"
    error: Failure | None = None
    cost: Cost | None = None
    version: int = VERSION

    @classmethod
    def from_json(cls, data: Any) -> StartupStatus:
        """Whatever a document holds, as the model: unknown keys dropped, wrong types made text
        or left at their defaults."""
        data = data if isinstance(data, dict) else {}
        steps = data.get("steps") if isinstance(data.get("steps"), dict) else {}
        error = data.get("error")
        gpus = data.get("gpus") if isinstance(data.get("gpus"), list) else []
        plain: dict[str, Any] = {name: _text(data.get(name)) for name in PLAIN_FIELDS}
        return cls(
            updated=_text(data.get("updated")),
            steps={name: Step.from_json(steps.get(name)) for name in STEPS},
            gpus=[str(gpu) for gpu in gpus],
            error=Failure(**{f: _text(error.get(f)) for f in ERROR_FIELDS})
            if isinstance(error, dict)
            else None,
            cost=Cost.from_json(data.get("cost")),
            **{name: value for name, value in plain.items() if value is not None},
        )

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def apply(self, changes: list[str], now: str) -> None:
        """Applies `KEY=VALUE` changes (see the module docstring) and stamps `updated`."""
        for change in changes:
            key, sep, value = change.partition("=")
            if not sep:
                raise ChangeError(f"{change!r} is not KEY=VALUE")
            kind, _, name = key.partition(".")
            if kind == "step" and name in self.steps:
                self._set_step(change, self.steps[name], value, now)
            elif kind == "detail" and name in self.steps:
                self.steps[name].detail = value
            elif key == "error":
                self.error = None
            elif kind == "error" and name in ERROR_FIELDS:
                self.error = self.error or Failure()
                setattr(self.error, name, value)
            elif kind == "cost" and (name in COST_FIELDS or name in ("spot", "since")):
                self._set_cost(change, name, value)
            elif key == "gpus":
                self.gpus = [line for line in value.splitlines() if line.strip()]
            elif key in PLAIN_FIELDS:
                setattr(self, key, value)
            else:
                raise ChangeError(f"{change!r}: unknown key {key!r}")
        self.updated = now

    @staticmethod
    def _set_step(change: str, step: Step, value: str, now: str) -> None:
        if value not in STEP_STATES:
            raise ChangeError(f"{change!r}: the state must be one of {STEP_STATES}")
        step.state = value
        if value == "running":
            step.started, step.finished = now, None
        elif value in ("done", "skipped", "failed"):
            step.finished = now

    def _set_cost(self, change: str, name: str, value: str) -> None:
        self.cost = self.cost or Cost()
        if name == "spot":
            self.cost.spot = value == "true"
        elif name == "since":
            self.cost.since = value
        else:
            try:
                setattr(self.cost, name, float(value) if value else None)
            except ValueError:
                raise ChangeError(f"{change!r}: not a number") from None


PROGRESS_VERSION = 1
RUN_STATES = ("running", "done", "failed", "interrupted")


def _metric(value: Any) -> float | str | None:
    return value if isinstance(value, str) else _number(value)


@dataclass(frozen=True)
class Progress:
    """`runs/<run-id>/progress.json`: the training job (kgg.job.runstate) writes it every
    epoch; `kgg status`, `runs` and `logs -f` read it, and a later run with the same --out
    compares its `fingerprint`. Read tolerantly: a field of the wrong type is absent."""

    state: str | None = None
    recipe: str | None = None
    phase: str | None = None
    epoch: int | None = None
    epochs: int | None = None
    updated: str | None = None
    # Scores by name; the finished run's also says which split they come from (`scored_on`).
    metrics: dict[str, float | str] = field(default_factory=dict)
    eta_seconds: float | None = None
    images_per_second: float | None = None
    error: str | None = None
    fingerprint: Any = None

    def to_json(self) -> dict[str, Any]:
        document = {"version": PROGRESS_VERSION, **dataclasses.asdict(self)}
        if self.error is None:
            del document["error"]
        return document

    @classmethod
    def from_json(cls, data: Any) -> Progress | None:
        if not isinstance(data, dict):
            return None
        state = data.get("state")
        raw_metrics = data.get("metrics")
        metrics: dict[Any, Any] = raw_metrics if isinstance(raw_metrics, dict) else {}

        def count(name: str) -> int | None:
            value = _number(data.get(name))
            return int(value) if value is not None and value == int(value) else None

        return cls(
            state=state if state in RUN_STATES else None,
            recipe=_text(data.get("recipe")),
            phase=_text(data.get("phase")),
            epoch=count("epoch"),
            epochs=count("epochs"),
            updated=_text(data.get("updated")),
            metrics={str(k): v for k, v in metrics.items() if _metric(v) is not None},
            eta_seconds=_number(data.get("eta_seconds")),
            images_per_second=_number(data.get("images_per_second")),
            error=_text(data.get("error")),
            fingerprint=data.get("fingerprint"),
        )


def read(path: Path) -> StartupStatus:
    try:
        return StartupStatus.from_json(json.loads(path.read_text()))
    except (OSError, ValueError):
        return StartupStatus()


def update_file(
    path: Path,
    changes: list[str],
    publish: Callable[[bytes], None] | None = None,
) -> StartupStatus:
    """Read, change and atomically rewrite the document under a lock: the startup script, the
    agent, the training service and the idle check each update their part. `publish` (the
    upload) runs under the same lock, so the bucket never gets an older copy after a newer one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        status = read(path)
        status.apply(changes, now_text())
        data = (json.dumps(status.to_json(), indent=1) + "\n").encode()
        tmp = path.with_name(f"{path.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        if publish is not None:
            publish(data)
    return status
