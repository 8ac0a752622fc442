"""What a Vertex AI job costs, from its body: the $/h of its machines (kgg/infra/vertex_prices.py)
read from its jobSpec (a CustomJob) or trialJobSpec (a tuning job), the same way for the body
`kgg submit`/`kgg sweep` are about to send and for the job the API answers `kgg runs` with.
Pure: no I/O."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from kgg.cli.vertex_spec import STRATEGIES, VERTEX_ACCELERATORS
from kgg.infra.catalogue import GPUS, machine_cost_usd
from kgg.infra.vertex_prices import (
    VERTEX_PRICES_CHECKED,
    VERTEX_PRICES_REGION,
    vertex_usd_per_hour,
)

# Scheduling.strategy -> the --scheduling word; unset is STANDARD (the API's default).
STRATEGY_WORDS = {api: word for word, api in STRATEGIES.items()}
DURATION = re.compile(r"^(?P<seconds>\d+(?:\.\d+)?)s$")
REGION_IN_NAME = re.compile(r"(?:^|/)locations/(?P<region>[^/]+)")
PRICES = f"Vertex AI {VERTEX_PRICES_REGION} prices of {VERTEX_PRICES_CHECKED}"


def job_spec(body: Mapping[str, Any]) -> Mapping[str, Any]:
    """The CustomJobSpec of a CustomJob (jobSpec) or of a tuning job's trials (trialJobSpec)."""
    spec = body.get("jobSpec") or body.get("trialJobSpec") or {}
    return spec if isinstance(spec, Mapping) else {}


def strategy(body: Mapping[str, Any]) -> str | None:
    """The job's --scheduling word; None for a strategy kgg does not price (a deprecated one)."""
    scheduling = job_spec(body).get("scheduling") or {}
    return STRATEGY_WORDS.get(str(scheduling.get("strategy") or "STANDARD"))


def _pools(body: Mapping[str, Any]) -> list[tuple[str, str | None, int, int]]:
    """(machine type, acceleratorType, accelerators, replicas) of each worker pool."""
    pools = []
    for pool in job_spec(body).get("workerPoolSpecs") or []:
        machine = pool.get("machineSpec") or {}
        accelerator = machine.get("acceleratorType")
        count = int(machine.get("acceleratorCount") or 0) if accelerator else 0
        replicas = int(pool.get("replicaCount") or 1)
        pools.append((str(machine.get("machineType", "?")), accelerator, count, replicas))
    return pools


def machine_text(body: Mapping[str, Any]) -> str:
    """`n1-highmem-4 + 1x NVIDIA_TESLA_T4` (each pool; `2 x (...)` for replicas)."""
    parts = []
    for machine_type, accelerator, count, replicas in _pools(body):
        text = f"{machine_type} + {count}x {accelerator}" if accelerator else machine_type
        parts.append(text if replicas == 1 else f"{replicas} x ({text})")
    return ", ".join(parts) or "no machine"


def region_of(name: str) -> str | None:
    """The region in `projects/P/locations/REGION/...`."""
    match = REGION_IN_NAME.search(name)
    return match["region"] if match else None


def usd_per_hour(body: Mapping[str, Any], region: str | None) -> float | None:
    """$/h of every machine of one run (a tuning job: of one trial); None when a price is unknown,
    including any region but the one the catalogue prices."""
    word = strategy(body)
    pools = _pools(body)
    if region != VERTEX_PRICES_REGION or word is None or not pools:
        return None
    total = 0.0
    for machine_type, accelerator, count, replicas in pools:
        rate = vertex_usd_per_hour(machine_type, accelerator, count, word)
        if rate is None:
            return None
        total += replicas * rate
    return total


def compute_engine_floor(body: Mapping[str, Any]) -> float | None:
    """A standard job's $/h at Compute Engine's own on-demand prices for its machines and GPUs
    (the catalogue's, us-central1, no static IP): Vertex AI's training price for the same
    machine is at least that (n1-standard-4 in us-central1: $0.2185 against Compute Engine's
    $0.19). None for spot and flex-start, which Vertex prices on SKUs of their own, and where a
    price is unknown."""
    if strategy(body) != "standard":
        return None
    gce_names = {api: gce for gce, api in VERTEX_ACCELERATORS.items()}
    total = 0.0
    for machine_type, accelerator, count, replicas in _pools(body):
        spec = GPUS.get(gce_names.get(accelerator, "")) if accelerator else None
        if accelerator and spec is None:
            return None
        rate = machine_cost_usd(spec, machine_type, count, spot=False)
        if rate is None:
            return None
        total += replicas * rate
    return total or None


def timeout(body: Mapping[str, Any]) -> timedelta | None:
    """The run's (a trial's) time limit, from its scheduling.timeout duration string."""
    value = (job_spec(body).get("scheduling") or {}).get("timeout")
    match = DURATION.match(str(value or ""))
    return timedelta(seconds=float(match["seconds"])) if match else None


def dollars(value: float) -> str:
    return f"${value:,.2f}"


def hours(value: timedelta) -> str:
    return f"{value.total_seconds() / 3600:g} h"


def estimate(body: Mapping[str, Any], region: str) -> str:
    """The line `submit` and `sweep` print before they create the job: the $/h, and the most it
    can cost by its time limit (a sweep: every trial running to its limit)."""
    what = f"{machine_text(body)}, {strategy(body) or 'an unpriced strategy'}"
    rate = usd_per_hour(body, region)
    if rate is None:
        where = "" if region == VERTEX_PRICES_REGION else f" in {region}"
        # The catalogue's Compute Engine prices are us-central1's too.
        floor = compute_engine_floor(body) if region == VERTEX_PRICES_REGION else None
        above = (
            f"; at least {dollars(floor)}/h, Compute Engine's own price for it"
            if floor is not None
            else ""
        )
        return (
            f"estimate: price unknown for {what}{where}: not in the catalogue's {PRICES} "
            f"(https://cloud.google.com/vertex-ai/pricing){above}"
        )
    line = f"estimate: {dollars(rate)}/h for {what} ({PRICES})"
    limit = timeout(body)
    if limit is None:
        return line
    most = rate * limit.total_seconds() / 3600
    trials = int(body.get("maxTrialCount") or 0)
    if "trialJobSpec" not in body or trials < 1:
        return f"{line}; at most {dollars(most)} by its {hours(limit)} timeout"
    parallel = max(1, int(body.get("parallelTrialCount") or 1))
    return (
        f"{line}; a sweep of {trials} trials, up to {parallel} at a time "
        f"({dollars(rate * parallel)}/h while {parallel} run): at most {dollars(most * trials)} "
        f"if each runs to its {hours(limit)} timeout"
    )
