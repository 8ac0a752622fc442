"""Inputs a new user brings, through `kgg train|predict`: linked folders, test
images in subfolders, tiny classes, weights files, corrupt caches and wrong paths. Each is used
as the user meant, or refused in one line that names it."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from kgg.job.cli import EXIT_USAGE
from tests.job.conftest import (
    TinyRun,
    png_bytes,
    train_argv,
    workload,
    write_class_images,
    write_tiny_data,
)


@pytest.fixture(scope="module")
def odd_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    """Data as people have it: a class folder linked to the data root, a broken link, a link
    out of the data folder, a class of three images, and test images in subfolders (the 2018
    guide's flow_from_directory)."""
    root = tmp_path_factory.mktemp("odd")
    data = write_tiny_data(root / "data", test_images=0)
    write_class_images(data / "train/Rare", 0, 3, np.random.default_rng(1))
    (data / "train/Loop").symlink_to("..")
    (data / "train/Maize/gone.png").symlink_to("missing.png")
    (root / "elsewhere.png").write_bytes(png_bytes(np.zeros((8, 8, 3), np.uint8)))
    (data / "train/Maize/outside.png").symlink_to(root / "elsewhere.png")
    rng = np.random.default_rng(2)
    for folder, name in (("a", "t0.png"), ("b", "t1.png")):
        (data / "test" / folder).mkdir(parents=True)
        pixels = rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)
        (data / "test" / folder / name).write_bytes(png_bytes(pixels))
    result = workload(*train_argv(), cwd=root)
    assert result.rc == 0, result.err
    return TinyRun(root, data, result)


def _metrics(run: TinyRun) -> dict:
    return json.loads((run.out / "metrics.json").read_text())


def test_linked_class_folder_is_not_followed_and_is_listed_as_skipped(odd_run: TinyRun) -> None:
    classes = json.loads((odd_run.out / "class_names.json").read_text())
    assert classes == ["Charlock", "Maize", "Rare", "Sugar beet"]
    skipped = {item["file"]: item["reason"] for item in _metrics(odd_run)["skipped_files"]["files"]}
    assert skipped["train/Loop"] == "link to the folder .., not followed"
    assert skipped["train/Maize/gone.png"] == "broken link to missing.png"
    outside = odd_run.root / "elsewhere.png"
    assert skipped["train/Maize/outside.png"] == f"link to {outside}, outside the data folder"
    split = (odd_run.out / "split.csv").read_text()
    assert "Loop" not in split
    assert "test" not in split


def test_test_images_in_subfolders_give_submission_rows_named_by_file(odd_run: TinyRun) -> None:
    rows = list(csv.reader((odd_run.out / "submission.csv").read_text().splitlines()))
    assert [row[0] for row in rows] == ["file", "t0.png", "t1.png"]


def test_two_test_images_with_one_name_are_an_error_naming_both(tmp_path: Path) -> None:
    data = write_tiny_data(tmp_path / "data", test_images=0)
    for folder in ("a", "b"):
        (data / "test" / folder).mkdir(parents=True)
        (data / "test" / folder / "x.png").write_bytes(png_bytes(np.zeros((8, 8, 3), np.uint8)))
    result = workload(*train_argv(), cwd=tmp_path)
    assert result.rc == EXIT_USAGE
    assert "data/test/a/x.png and data/test/b/x.png" in result.error_line()


def test_classes_with_fewer_than_five_images_are_warned_about(odd_run: TinyRun) -> None:
    warning = (
        "class 'Rare' has 3 image(s), fewer than 5: its validation and held-out scores rest on "
        "one image or none"
    )
    assert f"warning: {warning}" in odd_run.result.err
    assert [w for w in _metrics(odd_run)["warnings"] if w.startswith(warning)]
    assert not [line for line in odd_run.result.err.splitlines() if "'Maize'" in line]


def _dense_weights(path: Path) -> Path:
    """A weights file of another network: what a wrong download or a typo gives."""
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.save_weights(path)
    return path


@pytest.mark.parametrize("weights", ["model.keras", "dense.weights.h5"])
def test_weights_that_do_not_fit_vgg_are_refused_in_one_line(
    fast_run: TinyRun, tmp_path: Path, weights: str
) -> None:
    ours = weights == "model.keras"
    path = fast_run.out / weights if ours else _dense_weights(tmp_path / weights)
    result = workload(*train_argv("--weights", path, data=fast_run.data), cwd=tmp_path)
    assert result.rc == EXIT_USAGE
    line = result.error_line()
    assert str(path) in line
    assert "--weights takes imagenet, none, or a VGG weights file" in line
    if ours:
        assert "written by `train`" in line


def _predict(model: Path | str, images: Path | str, out: Path, cache: Path) -> list[str | Path]:
    return ["predict", "--model", model, "--images", images, "--out", out, "--cache-dir", cache]


@pytest.mark.parametrize(
    ("model", "images", "expected"),
    [("missing", "test", "model {model}/model.keras does not exist"),
     ("run", "missing", "images folder {images} does not exist"),
     ("run", "empty", "images folder {images} has no files"),
     ("truncated", "test", "model {model}/model.keras cannot be loaded"),
     ("truncated", "missing", "images folder {images} does not exist")],
)  # fmt: skip
def test_predict_errors_are_one_line_and_paths_are_checked_before_the_model(
    fast_run: TinyRun, tmp_path: Path, model: str, images: str, expected: str
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "truncated").mkdir()
    shutil.copy(fast_run.out / "class_names.json", tmp_path / "truncated")
    payload = (fast_run.out / "model.keras").read_bytes()
    (tmp_path / "truncated/model.keras").write_bytes(payload[: len(payload) // 3])
    model_path = fast_run.out if model == "run" else tmp_path / model
    images_path = fast_run.data / "test" if images == "test" else tmp_path / images
    result = workload(*_predict(model_path, images_path, tmp_path / "p.csv", tmp_path / "c"))
    assert result.rc == EXIT_USAGE
    assert expected.format(model=model_path, images=images_path) in result.error_line()
    assert not (tmp_path / "p.csv").exists()


def test_unreadable_image_cache_is_named_deleted_and_rebuilt(
    fast_run: TinyRun, tmp_path: Path
) -> None:
    argv = _predict(fast_run.out, fast_run.data / "test", tmp_path / "p.csv", tmp_path / "c")
    assert workload(*argv).rc == 0
    first = (tmp_path / "p.csv").read_text()
    [meta] = (tmp_path / "c/images").glob("*.json")
    meta.write_text(meta.read_text()[:10])  # what a kill while writing it left before
    result = workload(*argv)
    assert result.rc == 0, result.err
    assert f"warning: image cache {meta} is unreadable" in result.err
    assert json.loads(meta.read_text())["files"] == 4  # rebuilt
    assert (tmp_path / "p.csv").read_text() == first
