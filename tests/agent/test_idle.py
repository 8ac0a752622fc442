"""The idle-shutdown decision, one case per test, and the idle timer's check around it."""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

from kgg.agent.agent import Agent
from kgg.agent.idle import boot_time, decide, idle_check, parse_time
from kgg.agent.job_state import JobState, read_job_state
from kgg.agent.stop import stop_vm
from tests.agent.conftest import FakeSystem, uploaded_status


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
LONG_AGO = NOW - timedelta(hours=5)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def quiet_status(last_activity: datetime = LONG_AGO) -> dict[str, object]:
    return {
        "started": iso(LONG_AGO),
        "last_activity": iso(last_activity),
        "connections": 0,
        "kernels": 0,
    }


def kernel(state: str = "idle", last: datetime = LONG_AGO, connections: int = 0) -> dict:
    return {
        "id": "k1",
        "execution_state": state,
        "last_activity": iso(last),
        "connections": connections,
    }


def run(**overrides: object):
    arguments: dict[str, object] = {
        "now": NOW,
        "idle_minutes": 60,
        "booted": LONG_AGO,
        "jupyter_status": quiet_status(),
        "kernels": [],
        "job": JobState(active=False),
    }
    arguments.update(overrides)
    return decide(**arguments)  # type: ignore[arg-type]


def test_idle_for_longer_than_the_window_shuts_down() -> None:
    decision = run()
    assert decision.shutdown
    assert "300 minutes" in decision.reason


def test_idle_shutdown_off_never_shuts_down() -> None:
    decision = run(idle_minutes=0)
    assert not decision.shutdown
    assert "off" in decision.reason


def test_running_training_job_keeps_the_vm_up() -> None:
    decision = run(job=JobState(active=True, state="running", activity=LONG_AGO))
    assert not decision.shutdown
    assert "training" in decision.reason


def test_training_state_file_without_a_live_service_does_not_keep_the_vm_up() -> None:
    assert run(job=JobState(active=False, state="running", activity=LONG_AGO)).shutdown


def test_job_waiting_for_data_that_never_comes_does_not_keep_the_vm_up() -> None:
    assert run(job=JobState(active=True, state="waiting", activity=LONG_AGO)).shutdown


def test_data_still_arriving_counts_as_activity() -> None:
    recent = NOW - timedelta(minutes=10)
    decision = run(job=JobState(active=True, state="waiting", activity=recent))
    assert not decision.shutdown
    assert "10 of 60" in decision.reason


def test_busy_kernel_keeps_the_vm_up() -> None:
    decision = run(kernels=[kernel("busy")])
    assert not decision.shutdown
    assert "busy" in decision.reason


def test_open_connection_keeps_the_vm_up() -> None:
    decision = run(jupyter_status={**quiet_status(), "connections": 1})
    assert not decision.shutdown
    assert "connection" in decision.reason


def test_kernel_with_an_open_tab_keeps_the_vm_up() -> None:
    assert not run(kernels=[kernel(connections=2)]).shutdown


def test_recent_jupyter_activity_keeps_the_vm_up() -> None:
    decision = run(jupyter_status=quiet_status(NOW - timedelta(minutes=59)))
    assert not decision.shutdown
    assert "59 of 60" in decision.reason


def test_recent_kernel_activity_keeps_the_vm_up() -> None:
    assert not run(kernels=[kernel(last=NOW - timedelta(minutes=5))]).shutdown


def test_fresh_boot_gets_the_full_window() -> None:
    decision = run(booted=NOW - timedelta(minutes=3), jupyter_status=None, kernels=None)
    assert not decision.shutdown


def test_jupyter_not_answering_still_shuts_down_an_idle_vm() -> None:
    decision = run(jupyter_status=None, kernels=None)
    assert decision.shutdown
    assert "did not answer" in decision.reason


def test_exactly_the_window_shuts_down() -> None:
    assert run(jupyter_status=quiet_status(NOW - timedelta(minutes=60))).shutdown


def test_parse_time_reads_jupyter_timestamps_and_rejects_junk() -> None:
    assert parse_time("2026-11-27T10:00:00.123456Z") == datetime(
        2026, 11, 27, 10, 0, 0, 123456, tzinfo=UTC
    )
    assert parse_time("yesterday") is None
    assert parse_time(None) is None


def test_read_job_state_reads_the_state_file(tmp_path: Path) -> None:
    state = tmp_path / "job.json"
    state.write_text(json.dumps({"state": "waiting", "activity": iso(NOW)}))
    assert read_job_state(state, True) == JobState(True, "waiting", NOW)
    assert read_job_state(tmp_path / "missing.json", False) == JobState(False)


def test_boot_time_comes_from_uptime(tmp_path: Path) -> None:
    uptime = tmp_path / "uptime"
    uptime.write_text("3600.50 7000.00\n")
    assert boot_time(NOW, str(uptime)) == NOW - timedelta(seconds=3600.5)


def check(agent: Agent, uptime_seconds: float = 7200):
    """The timer's check on a VM up this long, with Jupyter not answering (nothing listens)."""
    proc = agent.paths.root / "proc"
    proc.mkdir(exist_ok=True)
    (proc / "uptime").write_text(f"{uptime_seconds:.2f} 100.00\n")
    settings = agent.settings
    port = free_port()
    settings = type(settings)(**{**settings.to_json(), "notebook_port": port})
    return idle_check(
        paths=agent.paths,
        settings=settings,
        system=agent.system,
        stop=lambda detail: stop_vm(agent, detail),
        log=agent.log,
        now=datetime.now(UTC),
    )


def test_idle_check_powers_off_an_old_vm_whose_jupyter_is_gone(
    agent: Agent, system: FakeSystem
) -> None:
    decision = check(agent)

    assert decision.shutdown
    assert "did not answer" in decision.reason
    assert system.powered_off == f"keras-gpu-gcp: stopped: {decision.reason}"  # no group
    status = uploaded_status(agent.instance.bucket)
    assert status["phase"] == "idle"
    assert status["steps"]["idle"]["detail"] == f"stopped: {decision.reason}"


def test_idle_check_stays_up_while_training_runs(agent: Agent, system: FakeSystem) -> None:
    system.active.add("kgg-training.service")
    agent.paths.job_state.write_text(json.dumps({"state": "running", "activity": iso(LONG_AGO)}))

    decision = check(agent)

    assert not decision.shutdown
    assert decision.reason == "the training job is running"
    assert system.powered_off is None


def test_idle_check_gives_a_fresh_vm_its_full_window(agent: Agent, system: FakeSystem) -> None:
    assert not check(agent, uptime_seconds=600).shutdown
    assert system.powered_off is None


def test_idle_check_waits_while_the_startup_script_runs(agent: Agent, system: FakeSystem) -> None:
    system.states["google-startup-scripts.service"] = "activating"

    decision = check(agent)

    assert not decision.shutdown
    assert decision.reason == "the startup script is still running"
    assert system.powered_off is None
