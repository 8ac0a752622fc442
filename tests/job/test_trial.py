"""The job's side of the Vertex contract: the run's folder from Vertex's variables, and metric
reports in exactly the format cloudml-hypertune (Google's reporter) writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from kgg.common.contract import METRIC_ID
from kgg.job import trial
from tests import fake_aiplatform as vertex
from tests.fake_aiplatform import sample_custom_job as custom_job
from tests.fake_aiplatform import sample_tuning_job as tuning_job

BASE = "gs://kgg-test-bucket/runs/sweep-1/"


def test_outside_vertex_there_is_no_contract() -> None:
    assert trial.from_environment({"HOME": "/root"}) is None


def test_a_custom_job_writes_its_run_in_the_folder_above_the_model_dir() -> None:
    run = trial.from_environment({
        "AIP_MODEL_DIR": "gs://kgg-test-bucket/runs/vx-1/model/",
        "AIP_CHECKPOINT_DIR": "gs://kgg-test-bucket/runs/vx-1/checkpoints/",
        "AIP_TENSORBOARD_LOG_DIR": "gs://kgg-test-bucket/runs/vx-1/logs/",
    })  # fmt: skip
    assert run is not None
    assert run.out == "gs://kgg-test-bucket/runs/vx-1"
    assert (run.trial_id, run.metric_file) == (None, Path("/tmp/hypertune/output.metrics"))
    assert run.tensorboard_dir == "gs://kgg-test-bucket/runs/vx-1/logs/"


def test_a_trial_writes_its_run_in_its_own_folder_of_the_sweep(tmp_path: Path) -> None:
    run = trial.from_environment({
        "AIP_MODEL_DIR": BASE + "3/model/", "CLOUD_ML_TRIAL_ID": "3",
        "CLOUD_ML_HP_METRIC_FILE": str(tmp_path / "m"),
    })  # fmt: skip
    assert run is not None
    assert (run.out, run.trial_id, run.metric_file) == (BASE + "3", "3", tmp_path / "m")


def test_the_fakes_variables_meet_the_jobs_reading_of_them() -> None:
    """What the Vertex fake gives a container (from the document's description of
    baseOutputDirectory) is what the job reads: one contract, two sides."""
    fake = vertex.FakeVertex(vertex.StaticAuthority({}))
    fake.jobs["projects/1/locations/us-central1/customJobs/7"] = custom_job()
    fake.jobs["projects/1/locations/us-central1/hyperparameterTuningJobs/8"] = tuning_job()
    single = trial.from_environment(
        fake.environment("projects/1/locations/us-central1/customJobs/7")
    )
    assert single is not None and single.out == "gs://kgg-test-bucket/runs/run-1"
    name = "projects/1/locations/us-central1/hyperparameterTuningJobs/8"
    second = trial.from_environment(fake.environment(name, "2"))
    assert second is not None and (second.out, second.trial_id) == (BASE + "2", "2")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CLOUD_ML_TRIAL_ID": "2"}, "CLOUD_ML_TRIAL_ID='2' but no AIP_MODEL_DIR"),
        ({"AIP_MODEL_DIR": "gs://b/runs/x/"}, "AIP_MODEL_DIR='gs://b/runs/x/' is not a gs:// or"),
        ({"AIP_MODEL_DIR": "runs/x/model/"}, "AIP_MODEL_DIR='runs/x/model/' is not a gs:// or"),
        ({"AIP_MODEL_DIR": BASE + "2/model/", "CLOUD_ML_TRIAL_ID": "3"},
         f"AIP_MODEL_DIR='{BASE}2/model/' is not the folder of trial 3"),
    ],
)  # fmt: skip
def test_a_contract_that_does_not_hold_is_refused_naming_it(env: dict, message: str) -> None:
    with pytest.raises(ValueError) as refused:
        trial.from_environment(env)
    assert str(refused.value).startswith(message)


# --- the metric file, against Google's own reporter -----------------------------------------------
def hypertune_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reports: list[dict],
                   trial_id: str | None) -> str:  # fmt: skip
    """What cloudml-hypertune writes for `reports`."""
    import hypertune

    path = tmp_path / "library" / "output.metrics"
    monkeypatch.setenv("CLOUD_ML_HP_METRIC_FILE", str(path))
    if trial_id is None:
        monkeypatch.delenv("CLOUD_ML_TRIAL_ID", raising=False)
    else:
        monkeypatch.setenv("CLOUD_ML_TRIAL_ID", trial_id)
    reporter = hypertune.HyperTune()
    for report in reports:
        reporter.report_hyperparameter_tuning_metric(
            hyperparameter_metric_tag=report.get("tag", METRIC_ID),
            metric_value=report["value"],
            global_step=report.get("step"),
            checkpoint_path=report.get("checkpoint_path", ""),
        )
    return path.read_text()


def ours_file(tmp_path: Path, reports: list[dict], trial_id: str | None) -> str:
    path = tmp_path / "ours" / "output.metrics"
    env = {"CLOUD_ML_HP_METRIC_FILE": str(path)}
    if trial_id is not None:
        env["CLOUD_ML_TRIAL_ID"] = trial_id
    reporter = trial.MetricReporter.from_environment(env)
    for report in reports:
        reporter.report(report["value"], step=report.get("step") or 0,
                        tag=report.get("tag", METRIC_ID),
                        checkpoint_path=report.get("checkpoint_path", ""))  # fmt: skip
    return path.read_text()


@pytest.mark.parametrize(
    ("reports", "trial_id"),
    [
        ([{"value": 0.9123}], "3"),
        ([{"value": 0.5, "step": 7, "checkpoint_path": "gs://b/runs/s/3/backup"}], "12"),
        ([{"value": 1, "step": 0}, {"value": 0.25, "step": 2, "tag": "val_micro_f1"}], None),
        ([{"value": i / 200, "step": i} for i in range(150)], "1"),
    ],
)
def test_the_metric_file_is_byte_for_byte_what_cloudml_hypertune_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reports: list[dict], trial_id: str | None
) -> None:
    ticks = iter(range(1_764_750_000, 1_764_760_000))
    monkeypatch.setattr("time.time", lambda: float(next(ticks)) + 0.25)
    theirs = hypertune_file(tmp_path, monkeypatch, reports, trial_id)
    ticks = iter(range(1_764_750_000, 1_764_760_000))
    ours = ours_file(tmp_path, reports, trial_id)
    assert ours == theirs
    lines = trial.read_reports(tmp_path / "ours" / "output.metrics")
    assert len(lines) == min(len(reports), trial.MAX_REPORTS)
    assert lines[-1]["trial"] == (trial_id or "0")


def test_a_report_reads_back_with_its_tag_value_and_step(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "hypertune" / "output.metrics"
    reporter = trial.MetricReporter(path, "4")
    reporter.report(0.875, step=12)
    (line,) = trial.read_reports(path)
    assert {k: v for k, v in line.items() if k != "timestamp"} == {
        "trial": "4", "micro_f1": "0.875", "global_step": "12", "checkpoint_path": "",
    }  # fmt: skip
    assert isinstance(line["timestamp"], float)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_score_that_is_not_a_number_is_refused(tmp_path: Path, value: float) -> None:
    with pytest.raises(ValueError, match="is not a finite number"):
        trial.MetricReporter(tmp_path / "m").report(value)
    assert not (tmp_path / "m").exists()
