"""`python -m kgg.agent training-job`: wait for the data, run the job as the notebook user,
report, maybe power off; SIGTERM (the VM stopping) is an interruption, not a failure."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading

import pytest

from kgg.agent.agent import Agent
from kgg.agent.job_state import read_job_state
from kgg.agent.training import training_job
from tests.agent.conftest import FakeSystem, uploaded_status
from tests.startup.harness import BUCKET, RUN_ID

DATA = "data/plant-seedlings"


def put(bucket: str, name: str, data: bytes = b"{}") -> None:
    from tests.iam import client_with, stack

    client = client_with(stack(bucket).owner_token)
    client.bucket(bucket).blob(name).upload_from_string(data)


@pytest.fixture
def uploaded(agent: Agent) -> Agent:
    """The data is in the bucket, upload manifest and all."""
    put(agent.instance.bucket, f"{DATA}/train/Maize/1.png", b"png")
    put(agent.instance.bucket, f"{DATA}/_upload_manifest.json", json.dumps({"version": 1}).encode())
    return agent


def sigterm_after(seconds: float, system: FakeSystem) -> threading.Timer:
    """What systemd does to the unit when the VM stops: SIGTERM to each of its processes."""

    def stop() -> None:
        for process in system.processes:
            process.send_signal(signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)

    timer = threading.Timer(seconds, stop)
    timer.start()
    return timer


def test_training_waits_for_the_data_then_runs_the_workload_command(
    uploaded: Agent, system: FakeSystem, history: list[dict]
) -> None:
    settings = dataclasses.replace(uploaded.settings, training_args=("--recipe", "guide", "2 3"))
    agent = dataclasses.replace(uploaded, settings=settings)

    assert training_job(agent, poll_seconds=0.1) == 0

    (train,) = [call for call in system.calls if call[:1] == ["runuser"]]
    assert train == [
        "runuser", "-u", "jupyter", "--", "env", "HOME=/home/jupyter",
        "PYTHONPATH=/opt/keras-gpu-gcp/app", "/opt/keras-gpu-gcp/venv/bin/python",
        "-m", "kgg", "train",
        "--data", f"gs://{BUCKET}/{DATA}", "--out", f"gs://{BUCKET}/runs/{RUN_ID}",
        "--recipe", "guide", "2 3",
    ]  # fmt: skip
    trainings = [doc["training"] for doc in history]
    assert trainings[:3] == [f"waiting for data at gs://{BUCKET}/{DATA}/", "running", "done"]
    assert uploaded_status(BUCKET)["phase"] == "done"
    assert agent.marked(f"training-done-{RUN_ID}") is not None
    assert read_job_state(agent.paths.job_state).state == "done"
    assert "epoch 1/1" in agent.paths.training_log.read_text()
    assert system.powered_off is None


def test_failed_training_is_reported_and_powers_off_with_shutdown_after_training(
    uploaded: Agent, system: FakeSystem
) -> None:
    system.job = "echo 'epoch 1/1'; echo 'Traceback: boom'; exit 3"
    agent = dataclasses.replace(
        uploaded, settings=dataclasses.replace(uploaded.settings, shutdown_after_training=True)
    )

    assert training_job(agent, poll_seconds=0.1) == 3

    status = uploaded_status(BUCKET)
    assert status["training"] == "failed"
    assert status["phase"] == "failed"
    assert status["error"]["step"] == "training"
    assert status["error"]["message"] == "kgg train exited with 3"
    assert "Traceback: boom" in status["error"]["log_tail"]
    assert "the run resumes at the next boot" in status["error"]["hint"]
    assert system.powered_off == "keras-gpu-gcp: stopped: training ended (shutdownAfterTraining)"
    assert agent.marked(f"training-done-{RUN_ID}") is None


def test_successful_training_powers_off_with_shutdown_after_training(
    uploaded: Agent, system: FakeSystem
) -> None:
    agent = dataclasses.replace(
        uploaded, settings=dataclasses.replace(uploaded.settings, shutdown_after_training=True)
    )

    assert training_job(agent, poll_seconds=0.1) == 0

    assert system.powered_off == "keras-gpu-gcp: stopped: training ended (shutdownAfterTraining)"
    assert uploaded_status(BUCKET)["training"] == "done"


def test_vm_stopping_while_waiting_for_data_is_no_failure(agent: Agent, system: FakeSystem) -> None:
    timer = sigterm_after(0.5, system)

    assert training_job(agent, poll_seconds=0.1) == 0

    timer.join()
    status = uploaded_status(BUCKET)
    assert status["training"] == "interrupted (VM stopping); resumes at the next boot"
    assert status["error"] is None
    assert read_job_state(agent.paths.job_state).state == "interrupted"


def test_vm_stopping_during_training_interrupts_the_run_without_marking_it_done(
    uploaded: Agent, system: FakeSystem
) -> None:
    # The job saves its epoch when told to stop, which takes a moment.
    system.job = "trap 'sleep 0.3; echo saved epoch; exit 143' TERM; echo 'epoch 1/9'; " + (
        "sleep 30 & wait"
    )
    timer = sigterm_after(1.0, system)

    assert training_job(uploaded, poll_seconds=0.1) == 0

    timer.join()
    assert uploaded_status(BUCKET)["training"].startswith("interrupted")
    assert uploaded.marked(f"training-done-{RUN_ID}") is None
    assert "saved epoch" in uploaded.paths.training_log.read_text()


def test_failure_while_waiting_for_data_is_reported(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = dataclasses.replace(
        agent, instance=dataclasses.replace(agent.instance, bucket="no-such-bucket")
    )

    assert training_job(agent, poll_seconds=0.1) == 1

    status = json.loads(agent.paths.status.read_text())
    assert status["error"]["step"] == "training"
    assert status["error"]["message"].startswith(
        "waiting for the data at gs://no-such-bucket/data/plant-seedlings/ failed:"
    )
    assert status["steps"]["training"]["state"] == "failed"


def test_a_job_that_was_told_to_stop_is_interrupted_not_failed(
    uploaded: Agent, system: FakeSystem
) -> None:
    """The job exits 75 (EX_TEMPFAIL) after a SIGTERM of its own: the same command resumes."""
    system.job = "echo 'interrupted: the run resumes'; exit 75"

    assert training_job(uploaded, poll_seconds=0.1) == 0

    status = uploaded_status(BUCKET)
    assert status["training"].startswith("interrupted")
    assert status["error"] is None
    assert uploaded.marked(f"training-done-{RUN_ID}") is None


HUGE = "1" + "0" * 400  # a JSON int no float holds


@pytest.mark.parametrize(
    "ledger",
    [
        b'{"version": 1, "boots": [], "runs": {}}',
        b'{"version": 1, "boots": {}, "runs": "lots"}',
        f'{{"version": 1, "boots": {{"b0": {{"seconds": {HUGE}}}}}, "runs": {{}}}}'.encode(),
        b'{"version": 1, "since": 7, "boots": {"b0": {"seconds": 5, "usd": "x"}}, "runs": [1]}',
        b"[1, 2]",
    ],
    ids=["boots-a-list", "runs-a-string", "int-too-large-for-a-float", "wrong-fields", "a-list"],
)
def test_a_malformed_cost_ledger_in_the_bucket_never_stops_a_finished_run(
    uploaded: Agent, system: FakeSystem, ledger: bytes
) -> None:
    """A bucket writer's status/cost.json: the run still ends done, marked, and stops the VM
    (shutdownAfterTraining); the ledger is rewritten with what had its shape."""
    from tests.agent.test_cost import booted

    booted(uploaded, "b1", 600.0)
    put(uploaded.instance.bucket, "status/cost.json", ledger)
    agent = dataclasses.replace(
        uploaded, settings=dataclasses.replace(uploaded.settings, shutdown_after_training=True)
    )

    assert training_job(agent, poll_seconds=0.1) == 0

    assert agent.marked(f"training-done-{RUN_ID}") is not None
    assert system.powered_off == "keras-gpu-gcp: stopped: training ended (shutdownAfterTraining)"
    written = json.loads(agent.paths.cost_ledger.read_text())
    assert set(written) == {"version", "since", "boots", "runs"}
    assert written["boots"]["b1"]["seconds"] == 600.0
    assert all(isinstance(entry["seconds"], float) for entry in written["boots"].values())
    assert isinstance(written["runs"], dict) and isinstance(written["since"], str)
