"""Result files that people read: history.csv, the two plots, submission/prediction CSVs."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kgg.common.contract import METRIC_ID

HISTORY_COLUMNS = (
    "phase",
    "epoch",
    "loss",
    "accuracy",
    METRIC_ID,
    "val_loss",
    "val_accuracy",
    "val_micro_f1",
    "learning_rate",
    "seconds",
)


def history_csv(rows: Sequence[dict[str, Any]]) -> str:
    """One row per finished epoch of every phase, in training order."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(row.get(k)) for k in HISTORY_COLUMNS})
    return buffer.getvalue()


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else ("" if value is None else value)


def predictions_csv(
    files: Sequence[str],
    probabilities: np.ndarray,
    class_names: Sequence[str],
    with_confidence: bool = False,
) -> str:
    """`file,species` (Kaggle's submission format), optionally with the top probability."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", "species", *(["confidence"] if with_confidence else [])])
    for name, probs in zip(files, probabilities, strict=True):
        best = int(np.argmax(probs))
        row = [name, class_names[best]]
        if with_confidence:
            row.append(f"{float(probs[best]):.4f}")
        writer.writerow(row)
    return buffer.getvalue()


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # headless VMs and CI: never open a window
    import matplotlib.pyplot as plt

    return plt


def plot_training_curves(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Loss and accuracy per epoch across all phases, phase boundaries marked."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    steps = np.arange(1, len(rows) + 1)
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for key, style in ((metric, "-"), (f"val_{metric}", "--")):
            values = [row.get(key) for row in rows]
            if any(v is not None for v in values):
                ax.plot(steps, [np.nan if v is None else v for v in values], style, label=key)
        previous = None
        for step, row in zip(steps, rows, strict=True):
            if row["phase"] != previous:
                ax.axvline(step - 0.5, color="grey", lw=0.5)
                ax.annotate(row["phase"], (step - 0.4, 0.98), xycoords=("data", "axes fraction"))
                previous = row["phase"]
        ax.set_xlabel("epoch (all phases)")
        ax.set_title(metric)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: Path
) -> None:
    """The headline set's confusion matrix (held-out, else validation), true classes as rows."""
    plt = _pyplot()
    counts = np.asarray(matrix)
    size = max(5.0, 0.6 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(counts, cmap="Greens")
    ax.set_xticks(range(len(class_names)), class_names, rotation=60, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = counts.max() / 2 if counts.size else 0
    for (i, j), count in np.ndenumerate(counts):
        ax.text(
            j,
            i,
            str(count),
            ha="center",
            va="center",
            color="white" if count > threshold else "black",
        )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
