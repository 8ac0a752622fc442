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

from kgg.common import storage
from kgg.job import images as images_lib
from kgg.job.config import TrainConfig, resolve
from kgg.job.runstate import FAIL_AFTER_ENV, SimulatedInterruption
from kgg.job.train import train
from tests.job.conftest import TINY, TinyRun, workload, write_tiny_data

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
    "split.csv",
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


def _history(out: str | Path) -> list[tuple[str, int]]:
    text = (storage.read_bytes(storage.join(str(out), "history.csv")) or b"").decode()
    return [(row["phase"], int(row["epoch"])) for row in csv.DictReader(io.StringIO(text))]


def _split(out: Path) -> dict[str, list[str]]:
    """split.csv: the files of each split."""
    splits: dict[str, list[str]] = {"train": [], "validation": [], "holdout": []}
    for row in csv.DictReader(io.StringIO((out / "split.csv").read_text())):
        splits[row["split"]].append(row["file"])
    return splits


def _recomputed(run: TinyRun, files: list[str]) -> dict[str, Any]:
    """Metrics of the saved model.keras on `files` (data-relative), computed here, apart from
    the job: decoded as the job decodes, labelled by their class folder."""
    import keras

    from kgg.job import model as model_lib
    from kgg.job.metrics import classification_metrics

    classes = json.loads((run.out / "class_names.json").read_text())
    images = np.stack([images_lib.decode_image(run.data / name, TINY) for name in files])
    labels = np.array([classes.index(name.split("/")[1]) for name in files])
    model_lib.preprocess_layer()
    network = keras.models.load_model(run.out / "model.keras", compile=False)
    predicted = network.predict(images.astype("float32"), verbose=0).argmax(axis=1)
    return classification_metrics(labels, predicted, classes)


def test_fast_recipe_writes_every_result_file(fast_run: TinyRun) -> None:
    assert set(p.name for p in fast_run.out.iterdir()) >= RESULT_FILES
    progress = json.loads((fast_run.out / "progress.json").read_text())
    assert (progress["state"], progress["phase"], progress["recipe"]) == ("done", "done", "fast")
    assert not (fast_run.out / "backup").exists()  # checkpoints only serve resuming
    assert json.loads((fast_run.out / "class_names.json").read_text()) == [
        "Charlock",
        "Maize",
        "Sugar beet",
    ]


def test_fast_recipe_history_has_each_epoch_of_each_phase_once(fast_run: TinyRun) -> None:
    assert _history(fast_run.out) == [("head", 1), ("head", 2), ("finetune", 1), ("finetune", 2)]


def test_headline_score_is_the_held_out_split_that_nothing_chose_on(fast_run: TinyRun) -> None:
    metrics = json.loads((fast_run.out / "metrics.json").read_text())
    splits = _split(fast_run.out)
    assert metrics["scored_on"] == "holdout"
    assert not set(splits["holdout"]) & (set(splits["train"]) | set(splits["validation"]))
    # Stratified: one image of each class of six (10%, at least one).
    assert sorted(name.split("/")[1] for name in splits["holdout"]) == [
        "Charlock", "Maize", "Sugar beet",
    ]  # fmt: skip
    expected = _recomputed(fast_run, splits["holdout"])
    assert metrics["confusion_matrix"] == expected["confusion_matrix"]
    for key in ("samples", "accuracy", "micro_f1", "macro_f1"):
        assert metrics[key] == pytest.approx(expected[key])
    validation = _recomputed(fast_run, splits["validation"])
    assert metrics["validation"]["micro_f1"] == pytest.approx(validation["micro_f1"])
    assert metrics["validation"]["chose_epochs"] is True


def test_result_line_and_runs_table_name_the_held_out_score(fast_run: TinyRun) -> None:
    from kgg.cli import results
    from kgg.common.documents import Progress

    metrics = json.loads((fast_run.out / "metrics.json").read_text())
    assert f"done: held-out micro-F1 {metrics['micro_f1']:.4f}" in fast_run.result.out
    progress = Progress.from_json(json.loads((fast_run.out / "progress.json").read_text()))
    summary = results.summarize_run("r1", metrics, progress)
    table = results.render_runs([summary], "b").splitlines()
    assert table[0].split()[:6] == ["run", "state", "micro-F1", "accuracy", "scored", "on"]
    assert table[1].split()[:5] == [
        "r1", "done", f"{metrics['micro_f1']:.4f}", f"{metrics['accuracy']:.4f}", "holdout",
    ]  # fmt: skip


def test_runs_table_shows_old_and_unknown_score_sets_as_validation() -> None:
    """Runs from before the held-out split scored validation; bucket text is never echoed."""
    from kgg.cli import results

    old = results.summarize_run("r0", {"accuracy": 0.9, "micro_f1": 0.9}, None)
    odd = results.summarize_run("r1", {"micro_f1": 0.9, "scored_on": "\x1b[2Jall"}, None)
    assert (old.scored_on, odd.scored_on) == ("validation", "validation")


def test_saved_model_holds_no_optimizer_state(fast_run: TinyRun) -> None:
    """The head's Adam used to travel inside model.keras: a warning on every load."""
    import warnings
    import zipfile

    import h5py
    import keras

    from kgg.job import model as model_lib

    with zipfile.ZipFile(fast_run.out / "model.keras") as archive:
        weights = io.BytesIO(archive.read("model.weights.h5"))
    names: list[str] = []
    with h5py.File(weights, "r") as handle:
        handle.visit(names.append)
    assert [name for name in names if "optimizer" in name] == []
    model_lib.preprocess_layer()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        keras.models.load_model(fast_run.out / "model.keras", compile=False)
    assert [str(w.message) for w in caught if "optimizer" in str(w.message)] == []


def test_unreadable_files_are_skipped_and_listed(fast_run: TinyRun) -> None:
    skipped = json.loads((fast_run.out / "metrics.json").read_text())["skipped_files"]
    assert skipped["count"] == 1
    assert skipped["files"][0]["file"] == "train/Maize/notes.txt"


def test_submission_has_one_row_per_test_image_in_kaggle_format(fast_run: TinyRun) -> None:
    rows = list(csv.reader((fast_run.out / "submission.csv").read_text().splitlines()))
    assert rows[0] == ["file", "species"]
    assert [row[0] for row in rows[1:]] == ["t0.png", "t1.png", "t2.png", "t3.png"]
    assert {row[1] for row in rows[1:]} <= {"Charlock", "Maize", "Sugar beet"}


def test_predict_command_agrees_with_the_submission(fast_run: TinyRun, tmp_path: Path) -> None:
    result = workload("predict", "--model", fast_run.out, "--images", fast_run.data / "test",
                      "--out", tmp_path / "p.csv", "--cache-dir", tmp_path)  # fmt: skip
    assert result.rc == 0
    predicted = [row[:2] for row in csv.reader((tmp_path / "p.csv").read_text().splitlines())]
    submitted = list(csv.reader((fast_run.out / "submission.csv").read_text().splitlines()))
    assert predicted[1:] == submitted[1:]


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
    state = storage.read_json(f"{out}/backup/state.json")
    assert state is not None
    assert state["phases"]["head"]["epochs_done"] == 2
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
    progress = storage.read_json(f"{out}/progress.json")
    assert progress is not None
    assert progress["state"] == "done"
    assert 0.0 <= metrics["micro_f1"] <= 1.0
    assert np.isclose(metrics["micro_f1"], metrics["accuracy"])


def test_final_model_is_the_best_monitored_epoch_across_head_and_finetune(
    fast_run: TinyRun,
) -> None:
    rows = list(csv.DictReader(io.StringIO((fast_run.out / "history.csv").read_text())))
    best = max(float(row["val_micro_f1"]) for row in rows)
    metrics = json.loads((fast_run.out / "metrics.json").read_text())
    assert metrics["validation"]["micro_f1"] == pytest.approx(best, abs=1e-4)


def test_predict_reads_model_and_images_from_gs_and_writes_there(
    fast_run: TinyRun, gcs_bucket: str, tmp_path: Path
) -> None:
    from kgg.job.predict import predict

    for name in ("model.keras", "class_names.json"):
        storage.upload_file(fast_run.out / name, f"gs://{gcs_bucket}/runs/r/{name}")
    storage.upload_tree(fast_run.data / "test", f"gs://{gcs_bucket}/new")
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


def test_fast_recipe_runs_under_mixed_float16(tmp_path: Path) -> None:
    """A T4's dtypes (float16 compute with loss scaling, float32 head), on the CPU."""
    write_tiny_data(tmp_path / "data")
    metrics = train(_config(tmp_path, precision="float16"))
    assert metrics["precision"] == "mixed_float16"
    assert np.isfinite(metrics["micro_f1"])
    rows = list(csv.DictReader(io.StringIO(Path(tmp_path, "out/history.csv").read_text())))
    assert all(np.isfinite(float(row["loss"])) for row in rows)


MIRRORED_RUN = """
import sys
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from kgg.job import runtime, train
from kgg.job.config import resolve

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
configure = runtime.configure


def mirrored(seed, precision):
    chosen = configure(seed, "float32").precision  # seeds and policy, as on a real machine
    return runtime.Runtime(strategy, ["a", "b"], chosen)


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
