"""The walkthrough notebook runs top to bottom on tiny synthetic data, so it never ships broken."""

from __future__ import annotations

import csv
import importlib.util
import io
import sys
from pathlib import Path

import numpy as np
import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "workload" / "notebooks" / "walkthrough.ipynb"
REPO_ROOT = NOTEBOOK.parents[2]
COLORS = {"Black-grass": (40, 160, 40), "Charlock": (210, 200, 40), "Maize": (90, 60, 30)}


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
    for index, colour in enumerate([*COLORS.values(), *COLORS.values()]):
        pixels = np.clip(rng.normal(colour, 25, (44, 44, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "test" / f"t{index}.png")
    return root


def _outputs(notebook: object) -> str:
    texts = []
    for cell in notebook.cells:  # type: ignore[attr-defined]
        for output in cell.get("outputs", []):
            texts.append(output.get("text", ""))
            texts.append(output.get("data", {}).get("text/plain", ""))
    return "\n".join(texts)


def _images(notebook: object) -> int:
    return sum(
        "image/png" in output.get("data", {})
        for cell in notebook.cells  # type: ignore[attr-defined]
        for output in cell.get("outputs", [])
    )


def test_walkthrough_runs_top_to_bottom_on_tiny_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("the notebook trains with TensorFlow (the ml dependency group)")
    import nbformat
    from nbclient import NotebookClient

    data = _synthetic_data(tmp_path / "data")
    out = tmp_path / "run"
    monkeypatch.setenv("KGG_DATA", str(data))
    monkeypatch.setenv("KGG_NOTEBOOK_OUT", str(out))
    monkeypatch.setenv("KGG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("KGG_TINY", "1")
    monkeypatch.delenv("KGG_RUNS", raising=False)  # no unattended run to follow: train here
    monkeypatch.delenv("KGG_RUN_ID", raising=False)
    monkeypatch.setenv("KGG_RECIPE", "fast")
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
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
    )
    assert Path(sys.executable).exists()
    client.execute()

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
