"""The job's results for fixed data and options stay what they were before the memory-mapped data
path (issue 23): history, metrics, submission and predictions of tiny float32 runs, against the
figures the in-memory code produced (tests/job/fixtures/reference_results.json).

On the CPU the same process repeats a run exactly; the tolerance allows for oneDNN kernels of
another instruction set (measured: switching oneDNN off moves losses by up to 3e-3 relative).
Regenerate the figures only for a change that is meant to alter results:
`uv run python -m tests.job.test_reference_results`.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.job.conftest import train_argv, workload, write_tiny_data

FIXTURE = Path(__file__).parent / "fixtures" / "reference_results.json"
# Each run's options on top of the tiny ones (conftest.TINY_ARGS); float32 everywhere, so that
# the figures do not depend on whether this CPU computes bfloat16.
FLOAT32 = ("--precision", "float32")
RUNS: dict[str, tuple[str, ...]] = {
    "fast": FLOAT32,
    "fast-on-images": (*FLOAT32, "--unfreeze-blocks", "2", "--head-epochs", "1",
                       "--finetune-epochs", "1"),
    "guide": (*FLOAT32, "--recipe", "guide", "--guide-epochs", "2"),
}  # fmt: skip
HISTORY_COLUMNS = ("loss", "accuracy", "micro_f1", "val_loss", "val_accuracy", "val_micro_f1",
                   "learning_rate")  # fmt: skip
RTOL, ATOL = 5e-3, 1e-5
CONFIDENCE_ATOL = 5e-4  # predictions.csv rounds confidences to 4 decimals
# metrics.json keys that are not results: measured speeds, and the local data's identity (its
# files' modification times).
NOT_RESULTS = ("images_per_second", "wall_seconds", "data")


def results_of(recipe_args: tuple[str, ...], root: Path) -> dict[str, Any]:
    """One tiny run (the data of the session's fast_run, a stray text file included) and a
    `predict` with its model: what a user reads from them."""
    write_tiny_data(root / "data")
    (root / "data/train/Maize/notes.txt").write_text("not an image")
    trained = workload(*train_argv(*recipe_args), cwd=root)
    assert trained.rc == 0, trained.err
    out = root / "out"
    history = [
        {k: v for k, v in row.items() if k != "seconds"}
        for row in csv.DictReader(io.StringIO((out / "history.csv").read_text()))
    ]
    metrics = json.loads((out / "metrics.json").read_text())
    for key in NOT_RESULTS:
        metrics.pop(key)
    predicted = workload("predict", "--model", out, "--images", root / "data/test",
                         "--out", root / "p.csv", "--cache-dir", root / "cache")  # fmt: skip
    assert predicted.rc == 0, predicted.err
    return {
        "history": history,
        "metrics": metrics,
        "submission": (out / "submission.csv").read_text(),
        "predictions": (root / "p.csv").read_text(),
    }


def _close(ours: Any, theirs: Any) -> bool:
    return ours == pytest.approx(theirs, rel=RTOL, abs=ATOL)


def _numbers_close(ours: Any, theirs: Any, where: str) -> None:
    """Every number of a JSON value within the tolerance, everything else equal."""
    if isinstance(theirs, dict):
        assert sorted(ours) == sorted(theirs), where
        for key in theirs:
            _numbers_close(ours[key], theirs[key], f"{where}.{key}")
    elif isinstance(theirs, list):
        assert len(ours) == len(theirs), where
        for index, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            _numbers_close(a, b, f"{where}[{index}]")
    elif isinstance(theirs, float):
        assert _close(ours, theirs), f"{where}: {ours} != {theirs}"
    else:
        assert ours == theirs, where


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    return json.loads(FIXTURE.read_text())


@pytest.mark.parametrize("name", sorted(RUNS))
def test_results_match_the_in_memory_codes_figures(
    name: str, reference: dict[str, Any], tmp_path: Path
) -> None:
    ours, theirs = results_of(RUNS[name], tmp_path), reference[name]
    assert [(r["phase"], r["epoch"]) for r in ours["history"]] == [
        (r["phase"], r["epoch"]) for r in theirs["history"]
    ]
    for mine, recorded in zip(ours["history"], theirs["history"], strict=True):
        for column in HISTORY_COLUMNS:
            assert _close(float(mine[column]), float(recorded[column])), (mine, recorded)
    _numbers_close(ours["metrics"], theirs["metrics"], "metrics")
    assert ours["submission"] == theirs["submission"]
    rows = [line.split(",") for line in ours["predictions"].splitlines()]
    recorded_rows = [line.split(",") for line in theirs["predictions"].splitlines()]
    assert [row[:2] for row in rows] == [row[:2] for row in recorded_rows]
    for mine_row, recorded_row in zip(rows[1:], recorded_rows[1:], strict=True):
        assert float(mine_row[2]) == pytest.approx(float(recorded_row[2]), abs=CONFIDENCE_ATOL)


def record() -> None:
    """Writes the fixture from the code as it is now."""
    figures = {}
    for name, args in RUNS.items():
        with tempfile.TemporaryDirectory(prefix="kgg-reference-") as folder:
            figures[name] = results_of(args, Path(folder))
    FIXTURE.parent.mkdir(exist_ok=True)
    FIXTURE.write_text(json.dumps(figures, indent=1) + "\n")
    print(f"wrote {FIXTURE}", file=sys.stderr)


if __name__ == "__main__":
    record()
