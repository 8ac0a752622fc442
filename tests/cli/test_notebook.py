"""The walkthrough notebook runs top to bottom on tiny synthetic data, so it never ships broken."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kgg.common import storage

NOTEBOOK = Path(__file__).resolve().parents[2] / "kgg" / "agent" / "notebooks" / "walkthrough.ipynb"
REPO_ROOT = NOTEBOOK.parents[3]
COLORS = {"Black-grass": (40, 160, 40), "Charlock": (210, 200, 40), "Maize": (90, 60, 30)}
TEST_FILES = [f"t{index}.png" for index in range(6)]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is None,
    reason="the notebook trains with TensorFlow (the ml dependency group)",
)


def _synthetic_data(root: Path) -> Path:
    """Three classes of noisy flat-colour PNGs (one with alpha, like some Kaggle images) + test/."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, colour in COLORS.items():
        folder = root / "train" / name
        folder.mkdir(parents=True)
        for index in range(6):
            pixels = np.clip(rng.normal(colour, 25, (40, 52, 3)), 0, 255).astype(np.uint8)
            image = Image.fromarray(pixels)
            (image.convert("RGBA") if index == 0 else image).save(folder / f"{index}.png")
    (root / "test").mkdir()
    for name, colour in zip(TEST_FILES, [*COLORS.values(), *COLORS.values()], strict=True):
        pixels = np.clip(rng.normal(colour, 25, (44, 44, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "test" / name)
    return root


def _execute(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    on_cell_execute: Callable[..., None] | None = None,
    **env: str,
) -> Any:
    """Runs the notebook in a fresh kernel of this interpreter; returns the executed notebook."""
    import nbformat
    from nbclient import NotebookClient

    settings = {
        "KGG_DATA": str(_synthetic_data(tmp_path / "data")),
        "KGG_NOTEBOOK_OUT": str(tmp_path / "run"),
        "KGG_CACHE_DIR": str(tmp_path / "cache"),
        "KGG_TINY": "1",
        "KGG_RECIPE": "fast",
        "PYTHONPATH": str(REPO_ROOT),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        **env,
    }
    for name in ("KGG_RUNS", "KGG_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), (
        "commit the notebook without outputs"
    )
    # The kernel spec's `python` resolves to this interpreter (jupyter_client swaps it for
    # sys.executable), so the kernel sees this environment's packages.
    client = NotebookClient(
        notebook,
        timeout=240,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
        on_cell_execute=on_cell_execute,
    )
    client.execute()
    return notebook


def _outputs(notebook: Any) -> str:
    texts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            texts.append(output.get("text", ""))
            texts.append(output.get("data", {}).get("text/plain", ""))
    return "\n".join(texts)


def _images(notebook: Any) -> int:
    return sum(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        for output in cell.get("outputs", [])
    )


def test_walkthrough_runs_top_to_bottom_on_tiny_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notebook = _execute(tmp_path, monkeypatch)
    out = tmp_path / "run"
    text = _outputs(notebook)
    assert "18 training images in 3 classes, 6 test images" in text
    assert "validation: accuracy" in text
    assert "species predicted:" in text
    # Bar chart, sample grid, curves, confusion matrix, test predictions.
    assert _images(notebook) == 5
    submission = list(csv.DictReader(io.StringIO((out / "submission.csv").read_text())))
    assert len(submission) == 6
    assert {row["species"] for row in submission} <= set(COLORS)
    predictions = (out / "predictions.csv").read_text().splitlines()
    assert predictions[0] == "file,species,confidence"
    assert len(predictions) == 7


def _finished_job(folder: Path) -> None:
    """What a finished unattended run leaves behind, made with the package's own writers."""
    import keras

    from kgg.job import metrics, report

    folder.mkdir(parents=True)
    names = list(COLORS)
    model = keras.Sequential(
        [keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(3, "softmax")]
    )
    model.save(folder / "model.keras")
    (folder / "class_names.json").write_text(json.dumps(names))
    scores = metrics.classification_metrics(np.array([0, 1, 2]), np.array([0, 1, 1]), names)
    (folder / "metrics.json").write_text(json.dumps(scores))
    rows = [{"phase": "head", "epoch": 1, "loss": 1.0, "accuracy": 0.5, "val_loss": 1.1,
             "val_accuracy": 0.4, "val_micro_f1": 0.4}]  # fmt: skip
    (folder / "history.csv").write_text(report.history_csv(rows))
    report.plot_training_curves(rows, folder / "training_curves.png")
    report.plot_confusion_matrix(scores["confusion_matrix"], names, folder / "confusion_matrix.png")
    (folder / "submission.csv").write_text(
        "file,species\n" + "".join(f"{name},Maize\n" for name in TEST_FILES)
    )


def test_walkthrough_follows_the_unattended_run_while_it_trains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = tmp_path / "bucket-runs" / "r7"
    _finished_job(job)
    progress = {"state": "running", "phase": "head", "epoch": 1, "epochs": 2,
                "metrics": {"val_micro_f1": 0.4}, "eta_seconds": 60.0}  # fmt: skip
    (job / "progress.json").write_text(json.dumps(progress))

    def job_finishes() -> None:
        time.sleep(3)  # a few polls of the following loop
        # As the job writes it: whole or not at all (a reader polls it meanwhile).
        storage.write_json(job / "progress.json", {**progress, "state": "done"})

    finisher = threading.Thread(target=job_finishes, daemon=True)

    def when_training_starts(cell: Any, cell_index: int) -> None:
        if "train_lib.train(config)" in cell.source:
            finisher.start()

    notebook = _execute(
        tmp_path,
        monkeypatch,
        on_cell_execute=when_training_starts,
        KGG_RUNS=str(job.parent),
        KGG_RUN_ID="r7",
        KGG_FOLLOW_POLL_SECONDS="0.5",
    )
    finisher.join()
    text = _outputs(notebook)
    assert f"The unattended run {job} is training on this GPU: following it." in text
    assert "head epoch 1/2  val_micro_f1 0.4000  (ETA 1 min)" in text
    assert "validation: accuracy 0.6667" in text  # the job's metrics, not a new run's
    assert not (tmp_path / "run" / "model.keras").exists()
    predictions = (tmp_path / "run" / "predictions.csv").read_text().splitlines()
    assert len(predictions) == 7  # predicted here with the job's model
    assert f"{job}/submission.csv: 6 rows" in text
