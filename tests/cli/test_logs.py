"""`kgg logs` through the real entry point, against the GCS emulator: the logs the
VM mirrors to the bucket, printed and followed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kgg.cli import logs
from kgg.cli.logs import Follower
from kgg.common import storage

from .conftest import REPO_ROOT, run_workload


def put_status(bucket: str, **fields: object) -> None:
    storage.write_json(f"gs://{bucket}/status/startup.json", {"version": 1, **fields})


def put_progress(bucket: str, run_id: str, state: str) -> None:
    storage.write_json(f"gs://{bucket}/runs/{run_id}/progress.json", {"state": state})


def test_logs_startup_prints_the_vms_startup_log_without_terminal_escapes(
    gcs_bucket: str, tmp_path: Path
) -> None:
    storage.write_bytes(
        f"gs://{gcs_bucket}/logs/startup.log",
        b"step driver: done\n\x1b]52;c;ZXZpbA==\x07step python\n",
    )
    result = run_workload("logs", "startup", "--bucket", gcs_bucket, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "step driver: done\n]52;c;ZXZpbA==step python\n"


def test_logs_train_prints_the_vms_current_run(gcs_bucket: str, tmp_path: Path) -> None:
    put_status(gcs_bucket, run_id="run-b")
    storage.write_bytes(f"gs://{gcs_bucket}/runs/run-a/train.log", b"old run\n")
    storage.write_bytes(f"gs://{gcs_bucket}/runs/run-b/train.log", b"epoch 1/2\n")

    default = run_workload("logs", "--bucket", gcs_bucket, cwd=tmp_path)
    by_id = run_workload("logs", "run-a", "--bucket", gcs_bucket, cwd=tmp_path)

    assert default.stdout == "epoch 1/2\n"
    assert by_id.stdout == "old run\n"


def test_logs_of_a_run_without_a_log_says_so_in_one_line(gcs_bucket: str, tmp_path: Path) -> None:
    result = run_workload("logs", "run-x", "--bucket", gcs_bucket, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: no run run-x's training log at gs://{gcs_bucket}/runs/run-x/train.log yet: "
        "the VM writes it once it runs (`kgg status`)"
    )


def test_logs_of_a_sweeps_trial_reads_its_folder_and_refuses_a_path_beyond(
    gcs_bucket: str, tmp_path: Path
) -> None:
    """A Vertex sweep's trial writes runs/SWEEP/TRIAL/train.log (bootstrap.py's `vertex`)."""
    storage.write_bytes(f"gs://{gcs_bucket}/runs/vs-1/2/train.log", b"trial 2: epoch 1/2\n")

    trial = run_workload("logs", "vs-1/2", "--bucket", gcs_bucket, cwd=tmp_path)
    beyond = run_workload("logs", "vs-1/2/../../status", "--bucket", gcs_bucket, cwd=tmp_path)

    assert (trial.returncode, trial.stdout) == (0, "trial 2: epoch 1/2\n")
    assert beyond.returncode == 2
    assert "'2/../../status' is not a run id" in beyond.stderr


def test_logs_refuses_a_run_name_that_is_not_a_run_id(gcs_bucket: str, tmp_path: Path) -> None:
    result = run_workload("logs", "../status", "--bucket", gcs_bucket, cwd=tmp_path)
    assert result.returncode == 2
    assert "'../status' is not a run id" in result.stderr


def test_logs_follow_prints_each_new_line_once_and_stops_when_the_run_ends(
    gcs_bucket: str, tmp_path: Path
) -> None:
    url = f"gs://{gcs_bucket}/runs/r1/train.log"
    put_progress(gcs_bucket, "r1", "running")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    argv = [sys.executable, "-m", "kgg", "logs", "r1", "-f", "--interval", "0.2"]
    process = subprocess.Popen(
        [*argv, "--bucket", gcs_bucket], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        text = ""
        for epoch in range(1, 4):
            text += f"epoch {epoch}/3\n"
            storage.write_bytes(url, text.encode())  # the VM uploads the whole file each time
            time.sleep(0.7)
        put_progress(gcs_bucket, "r1", "done")
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, err
    lines = [line for line in out.splitlines() if not line.startswith("(waiting")]
    assert lines == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]


def test_logs_follow_ends_with_exit_1_when_the_run_failed(gcs_bucket: str, tmp_path: Path) -> None:
    storage.write_bytes(f"gs://{gcs_bucket}/runs/r1/train.log", b"Traceback: out of memory\n")
    put_progress(gcs_bucket, "r1", "failed")
    result = run_workload("logs", "r1", "-f", "--bucket", gcs_bucket, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == "Traceback: out of memory\n"


def test_logs_follow_of_the_startup_log_stops_when_the_boot_is_over(
    gcs_bucket: str, tmp_path: Path
) -> None:
    storage.write_bytes(f"gs://{gcs_bucket}/logs/startup.log", b"boot: all steps done\n")
    put_status(gcs_bucket, phase="training", steps={"idle": {"state": "done"}})
    result = run_workload("logs", "startup", "-f", "--bucket", gcs_bucket, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "boot: all steps done\n"


def test_a_log_that_started_over_is_read_from_its_start(gcs_bucket: str) -> None:
    url = f"gs://{gcs_bucket}/logs/startup.log"
    storage.write_bytes(url, b"first VM: step driver\nfirst VM: step python\n")
    follower = Follower(url)
    follower.poll()
    storage.write_bytes(url, b"second VM\n")  # a new VM's own log replaces the old one

    assert follower.poll() == ("second VM\n", True)
    assert follower.poll() == ("", False)


def test_a_split_utf8_character_is_printed_whole(gcs_bucket: str) -> None:
    url = f"gs://{gcs_bucket}/runs/r1/train.log"
    storage.write_bytes(url, "loss 0.1 \u00b1".encode()[:-1])
    follower = Follower(url)
    first, _ = follower.poll()
    storage.write_bytes(url, "loss 0.1 \u00b1 0.02\n".encode())
    second, _ = follower.poll()
    assert first + second == "loss 0.1 \u00b1 0.02\n"


def test_a_long_log_shows_its_end_from_a_lines_start_and_says_what_it_left_out(
    gcs_bucket: str, tmp_path: Path
) -> None:
    """A bucket writer's (or a chatty job's) 3 MB log: `logs` reads its last MB, not all of it."""
    lines = [f"line {index:07d} {'x' * 50}\n" for index in range(50_000)]
    storage.write_bytes(f"gs://{gcs_bucket}/runs/r1/train.log", "".join(lines).encode())

    result = run_workload("logs", "r1", "--bucket", gcs_bucket, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    printed = result.stdout.splitlines(keepends=True)
    assert printed[0].startswith("--- the log's first 2.2 MB are not shown (all of it: gcloud ")
    assert printed[1] in lines and printed[-1] == lines[-1]
    assert len(result.stdout.encode()) <= logs.TAIL_BYTES + 200


def test_a_follower_reads_each_generation_by_range_a_chunk_at_a_time(
    gcs_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logs, "CHUNK_BYTES", 10)
    url = f"gs://{gcs_bucket}/runs/r1/train.log"
    storage.write_bytes(url, b"epoch 1/3 done\n")
    follower = Follower(url)
    reads = []
    read_from = storage.read_from

    def recording(*args: object) -> bytes | None:
        reads.append(args[1:])
        return read_from(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(storage, "read_from", recording)

    text = follower.poll()[0] + follower.poll()[0]
    storage.write_bytes(url, b"epoch 1/3 done\nepoch 2/3 done\n")
    text += follower.poll()[0] + follower.poll()[0] + follower.poll()[0]

    assert text == "epoch 1/3 done\nepoch 2/3 done\n"
    starts_and_ends = [(start, end) for start, _, end in reads]
    assert starts_and_ends == [(0, 9), (10, 14), (15, 24), (25, 29)]
