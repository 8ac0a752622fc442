"""What it cost, as the laptop shows it: `status` from the status document's `cost`, `runs` from
the VM's ledger (status/cost.json), through the real entry point against the GCS emulator."""

from __future__ import annotations

import json
from pathlib import Path

from kgg.common import storage

from .conftest import run_workload

COST = {
    "hourly_usd": 0.59, "spot": False, "vm_seconds": 3900.0, "vm_usd": 0.64,
    "run_seconds": 2400.0, "run_usd": 0.39, "total_seconds": 43800.0, "total_usd": 7.18,
    "since": "2026-11-20T08:00:00Z",
}  # fmt: skip


def test_status_shows_the_running_time_and_its_estimated_cost(
    gcs_bucket: str, tmp_path: Path
) -> None:
    storage.write_json(
        f"gs://{gcs_bucket}/status/startup.json",
        {"version": 1, "phase": "training", "run_id": "r1", "training": "running", "cost": COST},
    )
    result = run_workload("status", "--bucket", gcs_bucket, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (
        "Cost:        estimate: catalogue price x running time ($0.59/h on-demand); "
        "not your bill\n"
        "  this VM:  up 1h 05m, $0.64\n"
        "  run r1: trained 40m 00s, $0.39\n"
        "  all VMs since 2026-11-20: 12h 10m, $7.18\n"
    ) in result.stdout


def test_status_without_a_price_shows_the_time_and_no_made_up_cost(
    gcs_bucket: str, tmp_path: Path
) -> None:
    cost = {"spot": True, "vm_seconds": 600.0, "vm_usd": None, "total_seconds": 600.0}
    storage.write_json(
        f"gs://{gcs_bucket}/status/startup.json", {"version": 1, "phase": "done", "cost": cost}
    )
    result = run_workload("status", "--bucket", gcs_bucket, cwd=tmp_path)
    assert "(no catalogue price for this spot VM)" in result.stdout
    assert "  this VM:  up 10m 00s\n" in result.stdout
    assert "$" not in result.stdout.split("Cost:")[1].split("\n")[1]


def test_runs_shows_each_runs_training_time_and_cost_from_the_ledger(
    gcs_bucket: str, tmp_path: Path
) -> None:
    for run_id in ("r1", "r2"):
        storage.write_bytes(
            f"gs://{gcs_bucket}/runs/{run_id}/progress.json", json.dumps({"state": "done"}).encode()
        )
    ledger = {"runs": {"r1": {"seconds": 5400.0, "usd": 0.885}, "r2": {"seconds": "x"}}}
    storage.write_json(f"gs://{gcs_bucket}/status/cost.json", ledger)

    result = run_workload("runs", "--bucket", gcs_bucket, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:3]}
    assert rows["r1"][-3:] == ["1h", "30m", "0.89"]
    assert rows["r2"][-2:] == ["-", "-"]  # not a number in the ledger: not shown
    assert "(an estimate)" in result.stdout
