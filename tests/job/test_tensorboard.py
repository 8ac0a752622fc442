"""The job's TensorBoard event files: each phase's epoch scalars, those of history.csv, in
<out>/tensorboard/; in the bucket at every epoch and kept across a resume; mirrored by
`kgg tensorboard` and read back with TensorBoard's own event reader."""

from __future__ import annotations

import contextlib
import csv
import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kgg.common import storage
from kgg.job.runstate import FAIL_AFTER_ENV, SimulatedInterruption
from kgg.job.train import train
from tests.cli.conftest import run_workload
from tests.cli.test_cli import PROBE
from tests.job.conftest import TinyRun, write_tiny_data
from tests.job.test_train import _config

BUCKET = "kgg-tensorboard-test"  # its own bucket: the gs:// run below outlives one test
# history.csv column -> (event folder, TensorBoard tag); Keras writes validation's without val_.
COLUMNS = {
    "loss": ("train", "epoch_loss"),
    "accuracy": ("train", "epoch_accuracy"),
    "micro_f1": ("train", "epoch_micro_f1"),
    "learning_rate": ("train", "epoch_learning_rate"),
    "val_loss": ("validation", "epoch_loss"),
    "val_accuracy": ("validation", "epoch_accuracy"),
}


def scalars(folder: Path) -> dict[str, dict[int, float]]:
    """tag -> step -> value over every event file in `folder`, oldest file first, read with
    TensorBoard's EventFileLoader."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    values: dict[str, dict[int, float]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                number = float(tensor_util.make_ndarray(value.tensor))
                values.setdefault(value.tag, {})[event.step] = number
    return values


def history(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def assert_events_match_history(logdir: Path, rows: list[dict[str, str]]) -> None:
    """Every history.csv value is in the event files at step epoch - 1 (Keras counts from 0)."""
    assert rows
    for row in rows:
        for column, (split, tag) in COLUMNS.items():
            recorded = scalars(logdir / row["phase"] / split)[tag]
            step = int(row["epoch"]) - 1
            assert recorded[step] == pytest.approx(float(row[column]), rel=1e-5), (row, column)
    for phase in {row["phase"] for row in rows}:
        steps = sorted(scalars(logdir / phase / "train")["epoch_loss"])
        assert steps == [int(r["epoch"]) - 1 for r in rows if r["phase"] == phase]


def test_fast_run_writes_head_and_finetune_scalars_of_its_history(fast_run: TinyRun) -> None:
    rows = history((fast_run.out / "history.csv").read_text())
    assert {row["phase"] for row in rows} == {"head", "finetune"}
    assert_events_match_history(fast_run.out / "tensorboard", rows)


def test_guide_run_writes_its_scalars(tmp_path: Path) -> None:
    write_tiny_data(tmp_path / "data", per_class=4, test_images=1)
    config = _config(tmp_path, recipe="guide", guide_epochs=1)
    train(config)
    rows = history(Path(config.out, "history.csv").read_text())
    assert [row["phase"] for row in rows] == ["guide"]
    assert_events_match_history(Path(config.out, "tensorboard"), rows)


@pytest.fixture(scope="module")
def gs_run(gcs_emulator: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A gs:// run killed after head epoch 1, resumed on a fresh machine and finished: the
    tensorboard/ objects after the kill (names and bytes), and the run's root folder."""
    from google.cloud.exceptions import Conflict

    from tests.iam import client_with, stack

    with contextlib.suppress(Conflict):  # a bucket left by an earlier session
        # Made by the project's Owner in the stack's project (a bucket belongs to one).
        client_with(stack("kgg-test-bucket").owner_token).create_bucket(BUCKET)
    storage.delete_prefix(f"gs://{BUCKET}/runs")
    root = tmp_path_factory.mktemp("tb-gs")
    storage.upload_tree(write_tiny_data(root / "upload"), f"gs://{BUCKET}/data")
    storage.write_json(f"gs://{BUCKET}/data/_upload_manifest.json", {"version": 1})
    out = f"gs://{BUCKET}/runs/r1"
    config = _config(root, f"gs://{BUCKET}/data", out, finetune_epochs=2)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(FAIL_AFTER_ENV, "2")  # the features pass and head epoch 1
        with pytest.raises(SimulatedInterruption):
            train(config)
    after_kill = {
        info.name: storage.read_bytes(f"{out}/tensorboard/{info.name}")
        for info in storage.list_objects(f"{out}/tensorboard")
    }
    storage.download_tree(f"{out}/tensorboard", root / "after-kill", progress=False)
    shutil.rmtree(root / "cache")  # a new VM: nothing local, only the bucket
    train(config)
    yield {"root": root, "out": out, "after_kill": after_kill}
    storage.delete_prefix(f"gs://{BUCKET}/runs")


def test_killed_gs_run_has_the_epochs_scalars_in_the_bucket(gs_run: dict[str, Any]) -> None:
    state_history = history((storage.read_bytes(f"{gs_run['out']}/history.csv") or b"").decode())
    killed = scalars(gs_run["root"] / "after-kill/head/train")
    assert sorted(killed["epoch_loss"]) == [0]  # head epoch 1, synced before the kill
    assert killed["epoch_loss"][0] == pytest.approx(float(state_history[0]["loss"]), rel=1e-5)
    assert set(scalars(gs_run["root"] / "after-kill/head/validation")) >= {"epoch_loss"}


def test_resumed_gs_run_keeps_the_killed_processes_files_and_adds_its_own(
    gs_run: dict[str, Any],
) -> None:
    now = {
        info.name: storage.read_bytes(f"{gs_run['out']}/tensorboard/{info.name}")
        for info in storage.list_objects(f"{gs_run['out']}/tensorboard")
    }
    assert {name: now.get(name) for name in gs_run["after_kill"]} == gs_run["after_kill"]
    added = set(now) - set(gs_run["after_kill"])
    assert {name.rsplit("/", 1)[0] for name in added} == {
        "head/train", "head/validation", "finetune/train", "finetune/validation",
    }  # fmt: skip


def test_tensorboard_command_mirrors_the_run_and_its_reader_finds_the_history(
    gs_run: dict[str, Any], tmp_path: Path
) -> None:
    argv = ("tensorboard", "r1", "--no-serve", "--bucket", BUCKET, "--cache", "tb")
    first = run_workload(*argv, cwd=tmp_path, program=("-c", PROBE))
    assert first.returncode == 0, first.stderr
    assert first.stdout.rstrip().endswith("no tensorflow")
    rows = history((storage.read_bytes(f"{gs_run['out']}/history.csv") or b"").decode())
    assert [(r["phase"], r["epoch"]) for r in rows] == [
        ("head", "1"), ("head", "2"), ("finetune", "1"), ("finetune", "2"),
    ]  # fmt: skip
    assert_events_match_history(tmp_path / "tb" / BUCKET / "r1", rows)
    again = run_workload(*argv, cwd=tmp_path)
    assert "downloaded 0 files" in again.stdout, again.stdout


TRAIN = ("train", "--data", "data", "--out", "out", "--cache-dir", "cache", "--weights", "none",
         "--image-size", "32", "--head-epochs", "1", "--finetune-epochs", "1")  # fmt: skip
NO_TENSORBOARD = Path(__file__).parents[1] / "cli" / "fixtures" / "no_tensorboard"


def test_the_job_installs_tensorboard_wherever_it_runs() -> None:
    """tf.summary needs the tensorboard package and TensorFlow 2.21 no longer brings it: the
    job's own extra (ml; the VM installs it beside the vm extra, the checkout's default group
    takes it) must. A real boot's job failed at its first epoch without it."""
    import tomllib

    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    ml = {item.split(">")[0].split("<")[0].split("[")[0].strip()
          for item in project["project"]["optional-dependencies"]["ml"]}  # fmt: skip
    assert "tensorboard" in ml
    assert project["dependency-groups"]["ml"] == ["keras-gpu-gcp[ml]"]
    assert "ml" in project["tool"]["uv"]["default-groups"]


def test_a_job_without_tensorboard_trains_without_event_files(tmp_path: Path) -> None:
    write_tiny_data(tmp_path / "data")
    hide = (
        f"import sys; sys.path.insert(0, {str(NO_TENSORBOARD)!r}); import sitecustomize, runpy; "
        "runpy.run_module('kgg', run_name='__main__')"
    )
    result = run_workload(*TRAIN, cwd=tmp_path, program=("-c", hide))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "head: no TensorBoard event files: the tensorboard package is not installed" in (
        result.stdout
    )
    assert (tmp_path / "out" / "metrics.json").is_file()
    assert not (tmp_path / "out" / "tensorboard").exists()


def test_a_crash_inside_fit_exits_1_with_its_traceback(tmp_path: Path) -> None:
    """An exception nobody foresaw: the traceback, then exit 1 at once (TensorFlow's native
    threads once kept a crashed job alive on a real boot, and the VM up with it)."""
    write_tiny_data(tmp_path / "data")
    crash = (
        "import keras, runpy\n"
        "from kgg.job import tensorboard\n"
        "class Boom(keras.callbacks.Callback):\n"
        "    def on_epoch_end(self, epoch, logs=None):\n"
        "        raise RuntimeError('boom inside fit')\n"
        "tensorboard.callback = lambda run, phase: Boom()\n"
        "runpy.run_module('kgg', run_name='__main__')\n"
    )
    result = run_workload(*TRAIN, cwd=tmp_path, program=("-c", crash))
    assert result.returncode == 1
    assert "RuntimeError: boom inside fit" in result.stderr
    assert "Traceback (most recent call last)" in result.stderr
