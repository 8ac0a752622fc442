"""`kgg runs` and `kgg status` show the stack's Vertex AI runs and sweeps (where, state, queue
time, estimated cost, trials and the best) from the Vertex fake; `kgg pull SWEEP` fetches the best
trial from the bucket, `--all-trials` every one."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kgg.cli import main, vertex_runs
from kgg.cli.commands import results as results_command
from kgg.cli.commands import status as status_command
from kgg.cli.vertex_api import ENDPOINT_ENV
from kgg.common import storage
from kgg.infra import vertex_prices
from kgg.infra.vertex_prices import VertexPrice
from tests import fake_aiplatform as vertex
from tests import iam

from .test_vertex_commands import TARGET, kgg

T0 = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def _the_stack(monkeypatch: pytest.MonkeyPatch, bucket: str, outputs: dict[str, str]) -> None:
    """The stack's bucket and outputs, as each command module looks them up."""
    for module in (results_command, status_command):
        monkeypatch.setattr(module, "resolve_bucket", lambda explicit: bucket)
        monkeypatch.setattr(module, "stack_outputs", lambda: outputs)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def dollar_an_hour(monkeypatch: pytest.MonkeyPatch) -> None:
    """Test figures: the default n1-highmem-4 + 1x T4 at $1.00/h standard, $0.40/h spot."""
    monkeypatch.setattr(vertex_prices, "VERTEX_MACHINE_PRICES",
                        {"n1-highmem-4": VertexPrice(0.5, spot=0.2)})  # fmt: skip
    monkeypatch.setattr(vertex_prices, "VERTEX_GPU_PRICES",
                        {"NVIDIA_TESLA_T4": VertexPrice(0.5, spot=0.2)})  # fmt: skip


@pytest.fixture
def fake_vertex(
    gcs_bucket: str, monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> Iterator[vertex.FakeVertex]:
    with vertex.running_fake(iam.stack(gcs_bucket).authority, clock=clock) as fake:
        monkeypatch.setenv(ENDPOINT_ENV, fake.url)
        outputs = {"project": "kgg-demo-project", "region": "us-central1", "stack": "dev"}
        _the_stack(monkeypatch, gcs_bucket, outputs)
        yield fake


def test_runs_shows_a_run_and_a_sweep_with_its_trials_and_best(
    fake_vertex: vertex.FakeVertex, clock: Clock, capsys: pytest.CaptureFixture[str],
    dollar_an_hour: None,
) -> None:  # fmt: skip
    assert kgg(capsys, "submit", *TARGET, "--run-id", "vx-1")[0] == 0
    clock.now = T0 + timedelta(minutes=1)
    sweep_argv = ["--run-id", "vs-1", "--trials", "3", "--parallel", "2",
                  "--param", "unfreeze-blocks=1..3"]  # fmt: skip
    assert kgg(capsys, "sweep", *TARGET, *sweep_argv)[0] == 0
    run_name, sweep_name = fake_vertex.jobs
    clock.now = T0 + timedelta(minutes=4)
    for name in (run_name, sweep_name):
        fake_vertex.set_state(name, "JOB_STATE_PENDING")
        fake_vertex.set_state(name, "JOB_STATE_RUNNING")
    one = fake_vertex.start_trial(sweep_name, {"unfreeze-blocks": 1})
    two = fake_vertex.start_trial(sweep_name, {"unfreeze-blocks": 3})
    clock.now = T0 + timedelta(minutes=34)
    fake_vertex.end_trial(sweep_name, one, value=0.81)
    fake_vertex.end_trial(sweep_name, two, value=0.93)
    fake_vertex.set_state(run_name, "JOB_STATE_SUCCEEDED")

    code, out, err = kgg(capsys, "runs")
    assert code == 0, err
    section = out[out.index("Vertex AI:") :].splitlines()
    assert section[1].split() == ["run", "where", "state", "queued", "ran", "cost", "trials",
                                  "best", "micro-F1"]  # fmt: skip
    # 30 minutes at $1.00/h.
    assert section[2].split() == ["vx-1", "vertex", "submit", "succeeded", "4m00s", "30m00s",
                                  "$0.50", "-", "-"]  # fmt: skip
    # Still running: it has run until now (the laptop's clock, not the fake's); its cost is its
    # two trials' 30 minutes each, both ended.
    assert section[3].split()[:5] == ["vs-1", "vertex", "sweep", "running", "3m00s"]
    assert section[3].split()[-5:] == ["$1.00", "2/3", "0.9300", "(trial", "2)"]
    assert section[4] == "    vs-1 trial 1: succeeded, micro-F1 0.8100, unfreeze-blocks=1"
    assert section[5] == "    vs-1 trial 2: succeeded, micro-F1 0.9300, unfreeze-blocks=3 *"

    # status shows only what still runs.
    fake_vertex.set_state(sweep_name, "JOB_STATE_SUCCEEDED")
    capsys.readouterr()
    vertex_runs.print_section(status_command.stack_outputs, only_active=True)
    assert capsys.readouterr().out == ""


def test_a_queued_run_counts_its_wait_until_now() -> None:
    run = vertex_runs.parse_job(
        {"name": "projects/1/locations/us-central1/customJobs/9", "state": "JOB_STATE_QUEUED",
         "createTime": "2026-12-03T09:00:00.000Z", "labels": {"run": "vx-9"}},
        "submit",
    )  # fmt: skip
    assert run.queued(T0 + timedelta(hours=2, minutes=5)) == timedelta(hours=2, minutes=5)
    line = vertex_runs.render_jobs([run], T0 + timedelta(hours=2, minutes=5)).splitlines()[2]
    # Nothing spent before it starts.
    assert line.split() == ["vx-9", "vertex", "submit", "queued", "2h05m", "-", "-", "-", "-"]


def _custom_job(strategy: str, **times: str) -> dict:
    machine = {"machineType": "n1-highmem-4", "acceleratorType": "NVIDIA_TESLA_T4",
               "acceleratorCount": 1}  # fmt: skip
    return {
        "name": "projects/1/locations/us-central1/customJobs/7", "state": "JOB_STATE_RUNNING",
        "labels": {"run": "vx-7"}, "createTime": "2026-12-03T09:00:00Z", **times,
        "jobSpec": {"workerPoolSpecs": [{"machineSpec": machine, "replicaCount": "1"}],
                    "scheduling": {"strategy": strategy, "timeout": "86400s"}},
    }  # fmt: skip


def test_a_running_job_costs_its_machine_rate_until_now(dollar_an_hour: None) -> None:
    run = vertex_runs.parse_job(_custom_job("SPOT", startTime="2026-12-03T09:15:00Z"), "submit")
    assert run.usd_per_hour == pytest.approx(0.40)
    assert run.cost(T0 + timedelta(hours=2, minutes=45)) == pytest.approx(0.40 * 2.5)
    line = vertex_runs.render_jobs([run], T0 + timedelta(hours=2, minutes=45)).splitlines()[2]
    assert line.split()[4:7] == ["15m00s", "2h30m", "$1.00"]


def test_a_job_that_ran_without_a_price_shows_a_question_mark_and_why() -> None:
    """The catalogue's own table has no T4 price: `?`, and a line naming the prices it has."""
    run = vertex_runs.parse_job(
        _custom_job("STANDARD", startTime="2026-12-03T09:15:00Z", endTime="2026-12-03T10:15:00Z"),
        "submit",
    )
    lines = vertex_runs.render_jobs([run], T0 + timedelta(hours=3)).splitlines()
    assert lines[2].split()[5:7] == ["1h00m", "?"]
    assert lines[3] == (
        "  ? no price for its machine in the catalogue's Vertex AI us-central1 prices of "
        f"{vertex_prices.VERTEX_PRICES_CHECKED}"
    )


def test_a_sweep_sums_its_trials_and_an_open_trial_stops_with_the_sweep(
    dollar_an_hour: None,
) -> None:
    raw = _custom_job("STANDARD", startTime="2026-12-03T09:00:00Z",
                      endTime="2026-12-03T11:00:00Z")  # fmt: skip
    raw["name"] = "projects/1/locations/us-central1/hyperparameterTuningJobs/8"
    raw["trialJobSpec"] = raw.pop("jobSpec")
    raw["state"] = "JOB_STATE_CANCELLED"
    raw["trials"] = [
        {"id": "1", "state": "SUCCEEDED", "startTime": "2026-12-03T09:00:00Z",
         "endTime": "2026-12-03T09:45:00Z"},
        # Still ACTIVE in the answer when the sweep was cancelled at 11:00: billed until then.
        {"id": "2", "state": "ACTIVE", "startTime": "2026-12-03T10:00:00Z"},
        {"id": "3", "state": "REQUESTED"},
    ]  # fmt: skip
    run = vertex_runs.parse_job(raw, "sweep")
    assert run.cost(T0 + timedelta(days=1)) == pytest.approx(0.75 + 1.0)


def test_a_vertex_call_that_fails_leaves_the_bucket_view(
    gcs_bucket: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(ENDPOINT_ENV, "http://127.0.0.1:9/")  # nothing listens
    outputs = {"project": "kgg-demo-project", "region": "us-central1", "stack": "dev"}
    _the_stack(monkeypatch, gcs_bucket, outputs)
    code, out, err = kgg(capsys, "runs")
    assert code == 0 and "No runs in gs://kgg-test-bucket/runs/" in out
    assert err.startswith("(no Vertex AI view: GET http://127.0.0.1:9/v1/projects/")


def _write_sweep(bucket: str) -> None:
    for trial, score in (("1", 0.81), ("2", 0.93), ("3", None)):
        base = f"gs://{bucket}/runs/vs-1/{trial}"
        storage.write_bytes(f"{base}/model.keras", f"model {trial}".encode())
        storage.write_bytes(f"{base}/backup/ckpt", b"resume only")
        if score is not None:
            storage.write_json(f"{base}/metrics.json", {"micro_f1": score})


def test_pull_of_a_sweep_fetches_its_best_trial(
    gcs_bucket: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_sweep(gcs_bucket)
    argv = ["pull", "vs-1", "--bucket", gcs_bucket, "--to", str(tmp_path), "--quiet"]
    code, out, err = kgg(capsys, *argv)
    assert code == 0, err
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["vs-1/2/metrics.json", "vs-1/2/model.keras"]
    assert out.startswith(f"run vs-1/2 -> {tmp_path / 'vs-1' / '2'}: downloaded 2 files")

    code, _, err = kgg(capsys, *argv, "--all-trials")
    assert code == 0, err
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert "vs-1/1/model.keras" in files and "vs-1/3/model.keras" in files


def test_pull_of_a_plain_run_is_unchanged(
    gcs_bucket: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage.write_json(f"gs://{gcs_bucket}/runs/r1/metrics.json", {"micro_f1": 0.5})
    code, _, err = kgg(capsys, "pull", "r1", "--bucket", gcs_bucket, "--to", str(tmp_path),
                         "--quiet")  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "r1" / "metrics.json").is_file()


def test_main_runs_is_the_registered_command() -> None:
    args = main.build_parser().parse_args(["pull", "vs-1", "--all-trials"])
    assert args.all_trials is True
