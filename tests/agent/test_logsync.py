"""The VM's logs to the bucket (kgg/agent/logsync.py): the startup log and the run's training
log, uploaded while they grow, at every boot step end and when the job ends; on the GCS
emulator."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from kgg.agent.agent import Agent
from kgg.agent.boot import boot
from kgg.agent.config import LOG_SYNC_UNIT
from kgg.agent.logsync import (
    STARTUP_LOG_OBJECT,
    LogMirror,
    log_objects,
    restore_training_log,
    sync_loop,
    train_log_object,
)
from kgg.agent.training import training_job
from kgg.common import storage
from tests.agent.conftest import FakeSystem
from tests.agent.test_training import DATA, put
from tests.startup.harness import RUN_ID


def read(bucket: str, name: str) -> str | None:
    data = storage.read_bytes(f"gs://{bucket}/{name}")
    return None if data is None else data.decode()


def test_each_log_goes_to_its_object_and_again_only_when_it_changed(agent: Agent) -> None:
    bucket = agent.instance.bucket
    agent.paths.training_log.write_text("epoch 1/3\n")
    mirror = LogMirror(bucket, log_objects(agent.paths, RUN_ID))

    first = mirror.sync()
    unchanged = mirror.sync()
    with agent.paths.training_log.open("a") as log:
        log.write("epoch 2/3\n")
    grown = mirror.sync()

    assert sorted(first) == sorted([STARTUP_LOG_OBJECT, f"runs/{RUN_ID}/train.log"])
    assert unchanged == []
    assert grown == [f"runs/{RUN_ID}/train.log"]
    assert read(bucket, train_log_object(RUN_ID)) == "epoch 1/3\nepoch 2/3\n"
    assert read(bucket, STARTUP_LOG_OBJECT) == agent.paths.log.read_text()


def test_a_vm_on_a_new_disk_continues_the_runs_log(agent: Agent) -> None:
    bucket = agent.instance.bucket
    put(bucket, train_log_object(RUN_ID), b"epoch 1/3 (the first VM)\n")

    assert restore_training_log(agent.paths, bucket, RUN_ID)
    with agent.paths.training_log.open("a") as log:
        log.write("epoch 2/3 (this VM)\n")
    LogMirror(bucket, log_objects(agent.paths, RUN_ID)).sync()

    assert read(bucket, train_log_object(RUN_ID)) == (
        "epoch 1/3 (the first VM)\nepoch 2/3 (this VM)\n"
    )


def test_a_runs_log_bigger_than_any_run_writes_is_not_taken_over(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kgg.agent import logsync

    monkeypatch.setattr(logsync, "MAX_RESTORED_LOG_BYTES", 100)
    put(agent.instance.bucket, train_log_object(RUN_ID), b"x" * 101)

    assert not restore_training_log(agent.paths, agent.instance.bucket, RUN_ID)
    assert not agent.paths.training_log.exists()
    assert "the run's earlier log not restored: gs://" in agent.paths.log.read_text()


def test_a_local_log_is_never_replaced_by_the_buckets(agent: Agent) -> None:
    agent.paths.training_log.write_text("local lines\n")
    put(agent.instance.bucket, train_log_object(RUN_ID), b"older\n")

    assert not restore_training_log(agent.paths, agent.instance.bucket, RUN_ID)
    assert agent.paths.training_log.read_text() == "local lines\n"


def test_the_loop_uploads_the_last_lines_when_the_vm_stops(agent: Agent) -> None:
    bucket = agent.instance.bucket
    mirror = LogMirror(bucket, log_objects(agent.paths, RUN_ID))
    agent.paths.training_log.write_text("epoch 1/3\n")

    def stopping(seconds: float) -> None:
        with agent.paths.training_log.open("a") as log:
            log.write("saved epoch 1; stopping\n")
        os.kill(os.getpid(), signal.SIGTERM)  # what systemd does to the unit

    sync_loop(mirror, every=0, sleep=stopping)

    assert read(bucket, train_log_object(RUN_ID)) == "epoch 1/3\nsaved epoch 1; stopping\n"


def test_the_loop_runs_the_ledger_tick_each_round(agent: Agent) -> None:
    ticks: list[int] = []
    mirror = LogMirror(agent.instance.bucket, {})
    sync_loop(mirror, every=0, also=lambda: ticks.append(1), rounds=3, sleep=lambda s: None)
    assert len(ticks) == 3


def test_the_loop_goes_on_over_a_malformed_ledger_and_logs_what_it_dropped(agent: Agent) -> None:
    """kgg-log-sync used to die on a bucket writer's `"boots": []` (and systemd restarted it,
    again and again): now every round still uploads the logs."""
    from kgg.agent.cost import CostTicker
    from tests.agent.test_cost import booted

    booted(agent, "b1", 60.0)
    put(agent.instance.bucket, "status/cost.json", b'{"boots": [], "runs": "x", "since": 3}')
    agent.paths.log.write_text("step jupyter: done\n")
    mirror = LogMirror(agent.instance.bucket, {agent.paths.log: STARTUP_LOG_OBJECT})
    clock = iter(range(0, 1000, 100))
    ticker = CostTicker(agent, clock=lambda: float(next(clock)))

    sync_loop(mirror, every=0, also=ticker, rounds=2, sleep=lambda s: None)

    mirrored = read(agent.instance.bucket, STARTUP_LOG_OBJECT)
    assert mirrored is not None and mirrored.startswith("step jupyter: done\n")
    ledger = storage.read_json(f"gs://{agent.instance.bucket}/status/cost.json")
    assert ledger is not None
    assert ledger["boots"]["b1"]["seconds"] == 60.0 and ledger["runs"] == {}
    log = agent.paths.log.read_text()
    assert "dropped what is not a ledger's: since, boots (a list), runs (a str)" in log


def test_boot_starts_the_log_sync_service_and_uploads_the_startup_log(
    agent: Agent, system: FakeSystem
) -> None:
    assert boot(agent) == 0

    unit = (agent.paths.units / LOG_SYNC_UNIT).read_text()
    assert "ExecStart=/opt/keras-gpu-gcp/venv/bin/python -m kgg.agent log-sync" in unit
    assert LOG_SYNC_UNIT in system.active
    assert "boot: all steps done" in (read(agent.instance.bucket, STARTUP_LOG_OBJECT) or "")


def test_a_failed_step_reaches_the_buckets_startup_log(agent: Agent, system: FakeSystem) -> None:
    system.tensorflow_gpus = "0"

    assert boot(agent) == 1

    assert "step gpu-check failed" in (read(agent.instance.bucket, STARTUP_LOG_OBJECT) or "")


def test_the_training_log_is_in_the_bucket_when_the_job_ends(
    agent: Agent, system: FakeSystem
) -> None:
    put(agent.instance.bucket, f"{DATA}/train/Maize/1.png", b"png")
    put(agent.instance.bucket, f"{DATA}/_upload_manifest.json", b'{"version": 1}')
    system.job = "echo 'epoch 1/1 loss 0.5'; echo 'saved model'; exit 0"

    assert training_job(agent, poll_seconds=0.1) == 0

    assert read(agent.instance.bucket, train_log_object(RUN_ID)) == (
        "epoch 1/1 loss 0.5\nsaved model\n"
    )


def test_a_log_not_written_yet_is_skipped(agent: Agent, tmp_path: Path) -> None:
    mirror = LogMirror(agent.instance.bucket, {tmp_path / "absent.log": "logs/absent.log"})
    assert mirror.sync() == []
