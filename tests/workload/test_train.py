"""train: both recipes end to end on tiny data, results consistent, resume after a kill."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.workload.conftest import TINY, write_tiny_data
from workload import data, storage
from workload.config import TrainConfig, resolve
from workload.runstate import FAIL_AFTER_ENV, SimulatedInterruption
from workload.train import train

TINY_OPTIONS: dict[str, Any] = {
    "weights": "none",
    "image_size": TINY,
    "batch_size": 8,
    "head_epochs": 2,
    "finetune_epochs": 1,
    "patience": 5,
    "progress": False,
    "workers": 4,
}
RESULT_FILES = {
    "model.keras",
    "class_names.json",
    "config.json",
    "history.csv",
    "metrics.json",
    "confusion_matrix.png",
    "training_curves.png",
    "submission.csv",
    "progress.json",
}


def _config(
    root: Path, data_url: str | None = None, out: str | None = None, **options: Any
) -> TrainConfig:
    merged = {**TINY_OPTIONS, **options}
    recipe = merged.pop("recipe", "fast")
    return resolve(
        recipe,
        data=data_url or str(root / "data"),
        out=out or str(root / "out"),
        cache_dir=str(root / "cache"),
        **merged,
    )


def _history(out: str) -> list[tuple[str, int]]:
    text = (storage.read_bytes(storage.join(out, "history.csv")) or b"").decode()
    return [(row["phase"], int(row["epoch"])) for row in csv.DictReader(io.StringIO(text))]


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): storage.local_md5(p)
        for p in folder.rglob("*")
        if p.is_file()
    }


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainConfig, dict[str, Any]]:
    root = tmp_path_factory.mktemp("fast")
    write_tiny_data(root / "data")
    (root / "data/train/Maize/notes.txt").write_text("not an image")
    config = _config(root)
    return config, train(config)


def test_fast_recipe_writes_every_result_file(fast_run: tuple[TrainConfig, dict]) -> None:
    config, _ = fast_run
    assert set(p.name for p in Path(config.out).iterdir()) >= RESULT_FILES
    progress = json.loads(Path(config.out, "progress.json").read_text())
    assert (progress["state"], progress["phase"], progress["recipe"]) == ("done", "done", "fast")
    assert not Path(config.out, "backup").exists()  # checkpoints only serve resuming
    assert json.loads(Path(config.out, "class_names.json").read_text()) == [
        "Charlock",
        "Maize",
        "Sugar beet",
    ]


def test_fast_recipe_history_has_each_epoch_of_each_phase_once(
    fast_run: tuple[TrainConfig, dict],
) -> None:
    assert _history(fast_run[0].out) == [("head", 1), ("head", 2), ("finetune", 1)]


def test_metrics_json_matches_the_saved_models_predictions(
    fast_run: tuple[TrainConfig, dict],
) -> None:
    import keras

    from workload import model as model_lib
    from workload.metrics import classification_metrics

    config, _ = fast_run
    metrics = json.loads(Path(config.out, "metrics.json").read_text())
    dataset, classes = data.load_train(Path(config.data), TINY, config.cache_dir, progress=False)
    _, val = data.stratified_split(dataset.labels, config.val_split, config.seed)
    model_lib.preprocess_layer()
    network = keras.models.load_model(Path(config.out, "model.keras"), compile=False)
    predicted = network.predict(dataset.images[val].astype("float32"), verbose=0).argmax(axis=1)
    expected = classification_metrics(dataset.labels[val], predicted, classes)
    assert metrics["confusion_matrix"] == expected["confusion_matrix"]
    assert metrics["accuracy"] == pytest.approx(expected["accuracy"])
    assert metrics["micro_f1"] == pytest.approx(expected["micro_f1"])
    assert metrics["macro_f1"] == pytest.approx(expected["macro_f1"])
    assert set(metrics["wall_seconds"]) >= {"features", "head", "finetune"}
    assert metrics["images_per_second"]["inference"] > 0


def test_unreadable_files_are_skipped_and_listed(fast_run: tuple[TrainConfig, dict]) -> None:
    skipped = json.loads(Path(fast_run[0].out, "metrics.json").read_text())["skipped_files"]
    assert skipped["count"] == 1
    assert skipped["files"][0]["file"] == "train/Maize/notes.txt"


def test_submission_has_one_row_per_test_image_in_kaggle_format(
    fast_run: tuple[TrainConfig, dict],
) -> None:
    rows = list(csv.reader(Path(fast_run[0].out, "submission.csv").read_text().splitlines()))
    assert rows[0] == ["file", "species"]
    assert [row[0] for row in rows[1:]] == ["t0.png", "t1.png", "t2.png", "t3.png"]
    assert {row[1] for row in rows[1:]} <= {"Charlock", "Maize", "Sugar beet"}


def test_predict_command_agrees_with_the_submission(
    fast_run: tuple[TrainConfig, dict], tmp_path: Path
) -> None:
    from workload.cli import main

    out = Path(fast_run[0].out)
    assert main(["predict", "--model", str(out), "--images", str(Path(fast_run[0].data, "test")),
                 "--out", str(tmp_path / "p.csv"), "--cache-dir", str(tmp_path)]) == 0  # fmt: skip
    predicted = [row[:2] for row in csv.reader((tmp_path / "p.csv").read_text().splitlines())]
    submitted = list(csv.reader((out / "submission.csv").read_text().splitlines()))
    assert predicted[1:] == submitted[1:]


def test_rerunning_a_finished_run_changes_nothing(
    fast_run: tuple[TrainConfig, dict], capsys: pytest.CaptureFixture[str]
) -> None:
    config, _ = fast_run
    before = _snapshot(Path(config.out))
    train(config)
    assert "already done" in capsys.readouterr().out
    assert _snapshot(Path(config.out)) == before


def test_guide_recipe_trains_all_layers_with_the_sgd_schedule(tmp_path: Path) -> None:
    write_tiny_data(tmp_path / "data", per_class=4, test_images=1)
    config = _config(tmp_path, recipe="guide", guide_epochs=1)
    metrics = train(config)
    assert _history(config.out) == [("guide", 1)]
    row = next(csv.DictReader(io.StringIO(Path(config.out, "history.csv").read_text())))
    # lr / (1 + 1e-6 * steps) after 2 steps (9 training images, batch 8)
    assert float(row["learning_rate"]) == pytest.approx(1e-3 / (1 + 2e-6), rel=1e-4)
    assert metrics["samples"] == 3
    assert Path(config.out, "submission.csv").is_file()


def test_killed_run_resumes_at_the_next_epoch_and_refuses_other_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_tiny_data(tmp_path / "data")
    config = _config(tmp_path, head_epochs=3)
    monkeypatch.setenv(FAIL_AFTER_ENV, "2")  # the features pass and head epoch 1
    with pytest.raises(SimulatedInterruption):
        train(config)
    progress = json.loads(Path(config.out, "progress.json").read_text())
    assert (progress["state"], progress["phase"], progress["epoch"]) == ("running", "head", 1)
    monkeypatch.delenv(FAIL_AFTER_ENV)
    with pytest.raises(ValueError, match="different options"):
        train(_config(tmp_path, head_epochs=3, seed=1))
    capsys.readouterr()
    train(config)
    output = capsys.readouterr().out
    assert "head: continuing after epoch 1/3" in output
    assert "features: one pass" not in output
    assert _history(config.out) == [("head", 1), ("head", 2), ("head", 3), ("finetune", 1)]


def test_run_killed_while_fine_tuning_on_cached_maps_resumes_at_the_next_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_tiny_data(tmp_path / "data")
    config = _config(tmp_path, head_epochs=1, finetune_epochs=3)
    monkeypatch.setenv(FAIL_AFTER_ENV, "3")  # features, head 1, finetune 1
    with pytest.raises(SimulatedInterruption):
        train(config)
    progress = json.loads(Path(config.out, "progress.json").read_text())
    assert (progress["phase"], progress["epoch"]) == ("finetune", 1)
    monkeypatch.delenv(FAIL_AFTER_ENV)
    capsys.readouterr()
    train(config)
    output = capsys.readouterr().out
    assert "finetune: continuing after epoch 1/3" in output
    assert "block4 maps of" not in output  # the cached maps were kept locally
    assert _history(config.out) == [("head", 1), ("finetune", 1), ("finetune", 2), ("finetune", 3)]


def test_unfreezing_two_blocks_fine_tunes_on_images(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_tiny_data(tmp_path / "data", per_class=4, test_images=1)
    config = _config(tmp_path, head_epochs=1, unfreeze_blocks=2)
    train(config)
    output = capsys.readouterr().out
    assert "block4_conv1" in output
    assert "block4 maps" not in output
    assert _history(config.out) == [("head", 1), ("finetune", 1)]


def test_killed_gs_run_resumes_on_a_fresh_machine_from_the_bucket(
    gcs_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    storage.upload_tree(write_tiny_data(tmp_path / "upload"), f"gs://{gcs_bucket}/data")
    storage.write_json(f"gs://{gcs_bucket}/data/_upload_manifest.json", {"version": 1})
    data_url, out = f"gs://{gcs_bucket}/data", f"gs://{gcs_bucket}/runs/r1"
    config = _config(tmp_path, data_url, out)
    monkeypatch.setenv(FAIL_AFTER_ENV, "3")  # features, head 1, head 2: killed before finetune
    with pytest.raises(SimulatedInterruption):
        train(config)
    assert storage.read_json(f"{out}/backup/state.json")["phases"]["head"]["epochs_done"] == 2
    backed_up = {info.name for info in storage.list_objects(f"{out}/backup")}
    assert not [name for name in backed_up if "maps" in name]  # ~2 GB at full size: local only
    monkeypatch.delenv(FAIL_AFTER_ENV)
    shutil.rmtree(tmp_path / "cache")  # a new VM: nothing local, only the bucket
    capsys.readouterr()
    metrics = train(config)
    output = capsys.readouterr().out
    assert "resuming the run" in output
    assert "features: one pass" not in output
    assert "features: block4 maps of" in output  # recomputed for fine-tuning
    assert _history(out) == [("head", 1), ("head", 2), ("finetune", 1)]
    names = {info.name for info in storage.list_objects(out)}
    assert names >= RESULT_FILES
    assert not [name for name in names if name.startswith("backup/")]
    assert storage.read_json(f"{out}/progress.json")["state"] == "done"
    assert 0.0 <= metrics["micro_f1"] <= 1.0
    assert np.isclose(metrics["micro_f1"], metrics["accuracy"])


def test_final_model_is_the_best_monitored_epoch_across_head_and_finetune(
    fast_run: tuple[TrainConfig, dict],
) -> None:
    config, metrics = fast_run
    rows = list(csv.DictReader(io.StringIO(Path(config.out, "history.csv").read_text())))
    best = max(float(row["val_micro_f1"]) for row in rows)
    assert metrics["micro_f1"] == pytest.approx(best, abs=1e-4)


def test_predict_reads_model_and_images_from_gs_and_writes_there(
    fast_run: tuple[TrainConfig, dict], gcs_bucket: str, tmp_path: Path
) -> None:
    from workload.predict import predict

    config, _ = fast_run
    for name in ("model.keras", "class_names.json"):
        storage.upload_file(Path(config.out, name), f"gs://{gcs_bucket}/runs/r/{name}")
    storage.upload_tree(Path(config.data, "test"), f"gs://{gcs_bucket}/new")
    target = predict(
        f"gs://{gcs_bucket}/runs/r",
        f"gs://{gcs_bucket}/new",
        f"gs://{gcs_bucket}/out",
        str(tmp_path),
    )
    assert target == f"gs://{gcs_bucket}/out/predictions.csv"
    rows = list(csv.reader((storage.read_bytes(target) or b"").decode().splitlines()))
    assert rows[0] == ["file", "species", "confidence"]
    assert len(rows) == 5
    assert all(0.0 < float(row[2]) <= 1.0 for row in rows[1:])


def test_fast_recipe_runs_under_mixed_precision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GPU path's dtypes (float16 compute, float32 output and standardisation), on the CPU."""
    import keras

    from workload import runtime

    configure = runtime.configure

    def mixed(seed: int) -> runtime.Runtime:
        default = configure(seed)
        keras.mixed_precision.set_global_policy("mixed_float16")
        return runtime.Runtime(default.strategy, ["pretend T4"], mixed_precision=True)

    monkeypatch.setattr(runtime, "configure", mixed)
    write_tiny_data(tmp_path / "data")
    try:
        metrics = train(_config(tmp_path))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert np.isfinite(metrics["micro_f1"])
    rows = list(csv.DictReader(io.StringIO(Path(tmp_path, "out/history.csv").read_text())))
    assert all(np.isfinite(float(row["loss"])) for row in rows)


MIRRORED_RUN = """
import sys
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from workload import runtime, train
from workload.config import resolve

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
configure = runtime.configure


def mirrored(seed):
    configure(seed)  # seeds and float32 policy, as on a real machine
    return runtime.Runtime(strategy, ["a", "b"], mixed_precision=False)


runtime.configure = mirrored
root = sys.argv[1]
config = resolve("fast", data=root + "/data", out=root + "/out", cache_dir=root + "/cache",
                 weights="none", image_size=32, batch_size=7, head_epochs=1, finetune_epochs=1,
                 progress=False)
print("micro_f1", train.train(config)["micro_f1"])
"""


def test_fast_recipe_runs_with_mirrored_strategy_on_two_replicas(tmp_path: Path) -> None:
    """The several-GPU path on two logical CPUs; batch 7 must be rounded to an even 8."""
    import subprocess
    import sys

    write_tiny_data(tmp_path / "data", per_class=10)
    result = subprocess.run(
        [sys.executable, "-c", MIRRORED_RUN, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "micro_f1" in result.stdout
