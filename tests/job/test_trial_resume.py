"""A sweep's trial that is interrupted (a spot preemption's SIGTERM, here the job's simulated kill
on the same exit path) exits 75, and the same command in a fresh container resumes from the
trial's backup/ in the bucket and reports the tuner's metric once, at the end (kgg/job/trial.py,
docs/CONTRACTS.md, "The trial contract")."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kgg.common import storage
from kgg.common.contract import EXIT_RETRY, METRIC_ID
from kgg.job import trial
from kgg.job.runstate import FAIL_AFTER_ENV
from tests.job.conftest import TINY_ARGS, workload, write_tiny_data

TRIAL = "3"


def test_an_interrupted_trial_resumes_from_its_backup_and_reports_its_metric(
    gcs_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = f"gs://{gcs_bucket}/runs/vs-1/{TRIAL}"
    metric_file = tmp_path / "hypertune/output.metrics"
    monkeypatch.setenv("AIP_MODEL_DIR", f"{out}/model/")
    monkeypatch.setenv("CLOUD_ML_TRIAL_ID", TRIAL)
    monkeypatch.setenv("CLOUD_ML_HP_METRIC_FILE", str(metric_file))
    write_tiny_data(tmp_path / "data")
    # What the sweep's trial runs: no --out (AIP_MODEL_DIR says where), a tuner's parameter last.
    argv = ["train", "--data", "data", "--cache-dir", "cache", *TINY_ARGS, "--head-lr=0.01"]

    killed = workload(*argv, cwd=tmp_path, env={FAIL_AFTER_ENV: "2"})

    assert killed.rc == EXIT_RETRY == 75, killed.err
    assert "run the same command again to resume" in killed.err
    assert not metric_file.exists()  # an interrupted trial measures nothing
    backup = {info.name.rsplit("/", 1)[-1] for info in storage.list_objects(f"{out}/backup")}
    assert "state.json" in backup
    progress = json.loads(storage.read_bytes(f"{out}/progress.json") or b"{}")
    assert (progress["state"], progress["phase"]) == ("running", "head")  # as a hard kill leaves it

    shutil.rmtree(tmp_path / "cache")  # Vertex restarts the trial on a new machine: no local disk
    resumed = workload(*argv, cwd=tmp_path)

    assert resumed.rc == 0, resumed.err
    assert "head: continuing after epoch 1/2" in resumed.out
    assert "features: one pass" not in resumed.out
    metrics = json.loads(storage.read_bytes(f"{out}/metrics.json") or b"{}")
    (report,) = trial.read_reports(metric_file)
    assert report["trial"] == TRIAL
    assert float(report[METRIC_ID]) == pytest.approx(metrics[METRIC_ID])
    assert json.loads(storage.read_bytes(f"{out}/progress.json") or b"{}")["state"] == "done"
