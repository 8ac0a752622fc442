"""Resuming and reporting runs through `kgg train`: a run is its data's content
and its options; a rerun resumes it, or refuses in one line, or with --restart starts over.
Kills and SIGTERM leave a run that resumes on the trajectory it would have taken."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from kgg.job.cli import EXIT_RETRY, EXIT_USAGE
from kgg.job.runstate import FAIL_AFTER_ENV
from tests.job.conftest import (
    TinyRun,
    copy_run,
    train_argv,
    workload,
    write_class_images,
)

REPO = Path(__file__).resolve().parents[2]
# history.csv on the CPU: a resumed run repeats the uninterrupted one to float32 rounding of
# the same operations (observed: identical); `seconds` is the only column allowed to differ.
HISTORY_RTOL = 1e-5


def _history(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO((out / "history.csv").read_text())))


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*.json")}


def test_resume_after_two_class_folders_were_swapped_stops_naming_the_change(
    killed_run: TinyRun, tmp_path: Path
) -> None:
    copy_run(killed_run.root, tmp_path)
    train = tmp_path / "data/train"
    (train / "Charlock").rename(train / "swap")
    (train / "Maize").rename(train / "Charlock")
    (train / "swap").rename(train / "Maize")
    result = workload(*train_argv(), cwd=tmp_path)
    assert result.rc == EXIT_USAGE
    line = result.error_line()
    assert "data changed since it started (the same 23 files, other contents)" in line
    assert "--restart" in line
    assert not (tmp_path / "out/metrics.json").exists()


def test_resume_after_images_were_added_stops_and_restart_starts_over_with_them(
    killed_run: TinyRun, tmp_path: Path
) -> None:
    copy_run(killed_run.root, tmp_path)
    rng = np.random.default_rng(5)
    for label, name in enumerate(("Charlock", "Maize", "Sugar beet")):
        write_class_images(tmp_path / "data/train" / name, label, 6, rng, first=6)
    refused = workload(*train_argv(), cwd=tmp_path)
    assert refused.rc == EXIT_USAGE
    assert "data changed since it started (23 files then, 41 now)" in refused.error_line()
    restarted = workload(*train_argv("--restart"), cwd=tmp_path)
    assert restarted.rc == 0, restarted.err
    assert "starting over" in restarted.out
    split = list(csv.DictReader(io.StringIO((tmp_path / "out/split.csv").read_text())))
    assert len(split) == 36  # the 18 images added are trained on, nothing is left of before
    assert [row["phase"] for row in _history(tmp_path / "out")].count("head") == 2


def test_unfinished_run_with_other_options_is_not_resumed(
    killed_run: TinyRun, tmp_path: Path
) -> None:
    copy_run(killed_run.root, tmp_path)
    before = _snapshot(tmp_path / "out")
    result = workload(*train_argv("--seed", "1"), cwd=tmp_path)
    assert result.rc == EXIT_USAGE
    assert "other options (seed 42, now 1)" in result.error_line()
    assert _snapshot(tmp_path / "out") == before


@pytest.mark.parametrize("change", ["data", "options"])
def test_finished_run_of_other_data_or_options_is_not_reported_as_done(
    fast_run: TinyRun, tmp_path: Path, change: str
) -> None:
    copy_run(fast_run.root, tmp_path)
    extra: tuple[str, ...] = ()
    if change == "data":
        (tmp_path / "data/train/Maize/notes.txt").write_text("edited notes")
    else:
        extra = ("--head-epochs", "3")
    before = _snapshot(tmp_path / "out")
    result = workload(*train_argv(*extra), cwd=tmp_path)
    assert result.rc == EXIT_USAGE
    line = result.error_line()
    assert "holds a finished run, but" in line
    expected = "data changed" if change == "data" else "other options (head_epochs 2, now 3)"
    assert expected in line
    assert _snapshot(tmp_path / "out") == before  # the finished run is untouched


def test_rerunning_a_finished_run_with_the_same_data_and_options_changes_nothing(
    fast_run: TinyRun,
) -> None:
    before = {p: p.read_bytes() for p in fast_run.out.rglob("*") if p.is_file()}
    result = workload(*train_argv(), cwd=fast_run.root)
    assert result.rc == 0
    assert "is already done (held-out micro-F1" in result.out
    assert {p: p.read_bytes() for p in fast_run.out.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("checkpoint", ["state.json", "head.latest.1.weights.h5"])
def test_unreadable_checkpoint_is_named_with_the_command_to_start_over(
    killed_run: TinyRun, tmp_path: Path, checkpoint: str
) -> None:
    copy_run(killed_run.root, tmp_path)
    path = tmp_path / "out/backup" / checkpoint
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    result = workload(*train_argv(), cwd=tmp_path)
    assert result.rc == EXIT_USAGE
    line = result.error_line()
    assert f"checkpoint out/backup/{checkpoint} of the run in out is unreadable" in line
    assert "the same command with --restart" in line
    if checkpoint.endswith(".h5"):  # found mid-run, after the models were built
        restarted = workload(*train_argv("--restart"), cwd=tmp_path)
        assert restarted.rc == 0, restarted.err
        assert f"checkpoint out/backup/{checkpoint}" in restarted.out
        assert "starting over (--restart)" in restarted.out


@pytest.fixture(scope="module")
def resumed_run(killed_run: TinyRun, tmp_path_factory: pytest.TempPathFactory) -> list:
    """killed_run resumed in two more commands: killed again in fine-tuning, then finished."""
    root = copy_run(killed_run.root, tmp_path_factory.mktemp("resumed"))
    again = workload(*train_argv(), cwd=root, env={FAIL_AFTER_ENV: "2"})  # head 2, finetune 1
    assert again.rc == EXIT_RETRY, again.err
    finished = workload(*train_argv(), cwd=root)
    assert finished.rc == 0, finished.err
    return [root, again, finished]


def test_killed_and_resumed_run_repeats_the_uninterrupted_history(
    fast_run: TinyRun, resumed_run: list
) -> None:
    uninterrupted, resumed = _history(fast_run.out), _history(resumed_run[0] / "out")
    assert [(r["phase"], r["epoch"]) for r in resumed] == [
        ("head", "1"), ("head", "2"), ("finetune", "1"), ("finetune", "2"),
    ]  # fmt: skip
    for ours, theirs in zip(resumed, uninterrupted, strict=True):
        for column in ("loss", "accuracy", "micro_f1", "val_loss", "val_accuracy"):
            assert float(ours[column]) == pytest.approx(float(theirs[column]), rel=HISTORY_RTOL)
    metrics = json.loads((resumed_run[0] / "out/metrics.json").read_text())
    expected = json.loads((fast_run.out / "metrics.json").read_text())
    assert metrics["confusion_matrix"] == expected["confusion_matrix"]


def test_resumed_run_continues_after_its_last_epoch_without_recomputing(resumed_run: list) -> None:
    _, again, finished = resumed_run
    assert "head: continuing after epoch 1/2" in again.out
    assert "features: one pass" not in again.out + finished.out
    assert "finetune: continuing after epoch 1/2" in finished.out
    assert "block4 maps of" not in again.out + finished.out  # kept on the local disk


def test_sigterm_stops_the_run_within_20_s_marking_it_interrupted(
    fast_run: TinyRun, tmp_path: Path
) -> None:
    """What GCE sends a spot VM ~30 s before it stops it; a real process, a real signal."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    argv = train_argv("--head-epochs", "500", "--patience", "500", data=fast_run.data)
    job = subprocess.Popen(
        [sys.executable, "-m", "kgg", *map(str, argv)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(scratch)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    progress = tmp_path / "out/progress.json"
    deadline = time.monotonic() + 240  # a cold TensorFlow import takes 20 s on a busy machine
    while time.monotonic() < deadline and job.poll() is None:
        if progress.is_file() and json.loads(progress.read_text()).get("phase") == "head":
            break
        time.sleep(0.2)
    job.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    saved = None  # when progress.json says interrupted: what a new VM resumes from
    while job.poll() is None and time.monotonic() < signalled + 60:
        if saved is None and json.loads(progress.read_text()).get("state") == "interrupted":
            saved = time.monotonic() - signalled
        time.sleep(0.1)
    _, err = job.communicate(timeout=60)
    seconds = time.monotonic() - signalled
    saved = seconds if saved is None else saved
    print(f"interrupted {saved:.1f} s and exited {seconds:.1f} s after SIGTERM")
    # GCE powers a spot VM off ~30 s after its SIGTERM: the state must be written well before
    # (TensorFlow's teardown after it may take longer on a machine busy with IO).
    assert saved < 20
    assert job.returncode == EXIT_RETRY, err[-2000:]
    document = json.loads(progress.read_text())
    assert (document["state"], document["phase"]) == ("interrupted", "head")
    assert document["epoch"] >= 1
    assert "interrupted: SIGTERM" in err
    assert list(scratch.iterdir()) == []
    assert not [p for p in (tmp_path / "out").rglob(".tmp.*")]
