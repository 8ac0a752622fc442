"""What the stack's VMs have cost, estimated: the catalogue's price of this VM (on-demand or spot,
rendered into the settings) x its running time. The ledger, `status/cost.json` in the bucket (a
copy at /var/lib/keras-gpu-gcp/cost.json), outlives the VMs: a VM recreated on a new disk takes
it over. Each boot counts its uptime (the kernel's, from the boot on: the driver install
included), each run the time its training job ran; the status document gets a summary.

    {"version": 1, "since": "2026-11-27T10:00:00Z",
     "boots": {"<boot id>": {"seconds": 3600.0, "usd": 0.59, "hourly_usd": 0.59, "spot": false}},
     "runs": {"<run id>": {"seconds": 1800.0, "usd": 0.295}}}
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kgg.agent.agent import Agent
from kgg.agent.job_state import read_job_state
from kgg.common import storage
from kgg.common.contract import COST_OBJECT
from kgg.common.documents import now_text

TICK_SECONDS = 60.0

log = logging.getLogger("keras-gpu-gcp")


def _number(value: Any) -> float | None:
    """A finite float, or None: the ledger comes from the bucket, whose writers may put
    anything there (a list, a string, an int too large for a float)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _entry(data: Any) -> dict[str, float]:
    data = data if isinstance(data, dict) else {}
    values = {name: _number(data.get(name)) for name in ("seconds", "usd")}
    return {name: value for name, value in values.items() if value is not None}


def clean_ledger(data: Any) -> tuple[dict[str, Any], list[str]]:
    """The ledger with only what has its shape (module docstring), and what was dropped:
    a boot or run entry without its seconds, a field of the wrong type, the rest of the file."""
    if not isinstance(data, dict):
        return {}, ([] if data is None else [f"not a JSON object: {type(data).__name__}"])
    dropped = []
    since = data.get("since")
    if since is not None and not isinstance(since, str):
        dropped.append("since")
        since = None
    kept: dict[str, dict[str, dict[str, Any]]] = {"boots": {}, "runs": {}}
    for part in kept:
        entries = data.get(part)
        if entries is None:
            continue
        if not isinstance(entries, dict):
            dropped.append(f"{part} (a {type(entries).__name__})")
            continue
        for key, value in entries.items():
            entry: dict[str, Any] = dict(_entry(value))
            if "seconds" not in entry:
                dropped.append(f"{part}.{key}")
                continue
            if part == "boots":
                value = value if isinstance(value, dict) else {}
                entry |= {
                    "hourly_usd": _number(value.get("hourly_usd")),
                    "spot": value.get("spot") is True,
                }
            kept[part][str(key)] = entry
    return {"version": 1, "since": since, **kept}, dropped


def tick(
    ledger: dict[str, Any],
    *,
    boot_id: str,
    uptime: float,
    run_id: str,
    training: bool,
    hourly_usd: float | None,
    spot: bool,
    now: str,
) -> dict[str, Any]:
    """The ledger after this boot has run `uptime` seconds; the time since this boot's last
    tick goes to the run when its job is training. A pure function of its inputs."""
    ledger, _ = clean_ledger(ledger)
    boots = dict(ledger.get("boots") or {})
    runs = dict(ledger.get("runs") or {})
    previous = _entry(boots.get(boot_id)).get("seconds")
    price = hourly_usd or 0.0
    boots[boot_id] = {
        "seconds": round(uptime, 1),
        "usd": round(uptime * price / 3600, 4),
        "hourly_usd": hourly_usd,
        "spot": spot,
    }
    if training and previous is not None and uptime > previous:
        run = runs.setdefault(run_id, {"seconds": 0.0, "usd": 0.0})
        run["seconds"] = round(run.get("seconds", 0.0) + uptime - previous, 1)
        run["usd"] = round(run.get("usd", 0.0) + (uptime - previous) * price / 3600, 4)
    return {"version": 1, "since": ledger.get("since") or now, "boots": boots, "runs": runs}


def summary(
    ledger: dict[str, Any], boot_id: str, run_id: str, hourly_usd: float | None, spot: bool
) -> list[str]:
    """The status document's `cost.*` changes for this VM, its run and the whole stack."""
    ledger, _ = clean_ledger(ledger)
    boots = [_entry(v) for v in (ledger.get("boots") or {}).values()]
    this = _entry((ledger.get("boots") or {}).get(boot_id))
    run = _entry((ledger.get("runs") or {}).get(run_id))
    known = hourly_usd is not None
    values = {
        "hourly_usd": hourly_usd,
        "vm_seconds": this.get("seconds"),
        "vm_usd": this.get("usd") if known else None,
        "run_seconds": run.get("seconds", 0.0),
        "run_usd": run.get("usd", 0.0) if known else None,
        "total_seconds": round(sum(b.get("seconds", 0.0) for b in boots), 1),
        "total_usd": round(sum(b.get("usd", 0.0) for b in boots), 4) if known else None,
    }
    changes = [f"cost.{k}={'' if v is None else v}" for k, v in values.items()]
    since = ledger.get("since") or ""
    return [*changes, f"cost.spot={'true' if spot else 'false'}", f"cost.since={since}"]


@dataclass
class CostTicker:
    """The ledger's tick for the log-sync loop: at most every TICK_SECONDS, and always when
    forced (the job's end, the VM stopping)."""

    agent: Agent
    clock: Callable[[], float] = time.monotonic
    every: float = TICK_SECONDS
    _last: float | None = field(default=None, init=False)

    def __call__(self, force: bool = False) -> None:
        now = self.clock()
        if not force and self._last is not None and now - self._last < self.every:
            return
        self._last = now
        try:
            self._tick()
        except (OSError, ValueError, storage.StorageError) as error:
            log.warning("cost ledger not updated: %s", error)
        except Exception:  # whatever else: the log sync and the job's end must go on
            log.exception("cost ledger not updated")

    def _tick(self) -> None:
        """Under a lock: the log-sync loop and the training service (at the job's end) both
        tick."""
        paths = self.agent.paths
        paths.cost_ledger.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{paths.cost_ledger}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._tick_locked()

    def _tick_locked(self) -> None:
        agent, paths = self.agent, self.agent.paths
        url = f"gs://{agent.instance.bucket}/{COST_OBJECT}"
        local = paths.cost_ledger.read_bytes() if paths.cost_ledger.exists() else None
        ledger = _load(local, str(paths.cost_ledger))
        if not ledger:  # a new disk: the stack's earlier VMs are in the bucket's copy
            try:
                ledger = _load(storage.read_limited(url), url)
            except storage.TooLargeError as error:  # not a ledger: a new one replaces it
                log.warning("cost ledger: %s; starting a new one", error)
        boot_id = paths.boot_id.read_text().strip()
        uptime = float(paths.uptime.read_text().split()[0])
        training = read_job_state(paths.job_state).state == "running"
        settings, run_id = agent.settings, agent.instance.run_id
        ledger = tick(
            ledger,
            boot_id=boot_id,
            uptime=uptime,
            run_id=run_id,
            training=training,
            hourly_usd=settings.hourly_usd,
            spot=settings.spot,
            now=now_text(),
        )
        data = (json.dumps(ledger, indent=1, sort_keys=True) + "\n").encode()
        tmp = paths.cost_ledger.with_name(f"{paths.cost_ledger.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, paths.cost_ledger)
        storage.write_bytes(url, data, content_type="application/json")
        agent.status.update(*summary(ledger, boot_id, run_id, settings.hourly_usd, settings.spot))


def _load(data: bytes | None, source: str) -> dict[str, Any]:
    """The ledger in `data`, with what does not have its shape dropped (and said in the log)."""
    try:
        raw = json.loads(data) if data else None
    except ValueError as error:
        log.warning("cost ledger %s is not JSON (%s): starting a new one", source, error)
        return {}
    ledger, dropped = clean_ledger(raw)
    if dropped:
        log.warning(
            "cost ledger %s: dropped what is not a ledger's: %s", source, ", ".join(dropped)
        )
    return ledger if raw is not None else {}
