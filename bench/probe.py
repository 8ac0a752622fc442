"""Runs the real training job (`kgg train`) on the full-size data with every fit
and predict cut to a few steps, so the parent can read its peak resident memory in minutes.

Everything that takes memory runs as in a real run: cold-cache decoding of train/ and test/, the
train/validation copies, the tf.data pipelines over them, the models and optimizer state, one
training step's activations, the results written. Only the number of steps is bounded:
`keras.Model.fit` gets steps_per_epoch/validation_steps, and `predict` runs a few batches and
repeats their rows to the full length (features of repeated rows cost no extra memory to speak of);
a model predicted again (the block4 maps, chunk by chunk) reuses its first rows.

With BENCH_PROBE_REPORT set, the seconds the job spent in images.load_images (decoding, on a
cold cache) and the files it decoded are written there as JSON, for bench/scale.py.

Usage: python -m bench.probe STEPS -- <kgg train arguments>
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPORT_ENV = "BENCH_PROBE_REPORT"


def bound_keras(steps: int) -> None:
    """Patches keras.Model.fit and predict in this process only (the job's code is untouched)."""
    import keras
    import tensorflow as tf

    fit, predict = keras.Model.fit, keras.Model.predict
    parts: dict[int, Any] = {}

    def bounded_fit(self: Any, x: Any = None, y: Any = None, **kwargs: Any) -> Any:
        kwargs["steps_per_epoch"] = steps
        if kwargs.get("validation_data") is not None:
            kwargs["validation_steps"] = 1
        # Repeat so that `steps` steps per epoch never run out of data.
        if isinstance(x, tf.data.Dataset):
            x = x.repeat()
        return fit(self, x, y, **kwargs)

    def bounded_predict(self: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(x, tf.data.Dataset):
            return predict(self, x, *args, **kwargs)

        def count(rows: Any, element: Any) -> Any:
            return rows + tf.cast(tf.shape(tf.nest.flatten(element)[0])[0], tf.int64)

        rows = int(x.reduce(np.int64(0), count))
        # The job predicts the block4 maps chunk by chunk: a model's first call computes a few
        # batches, later calls reuse them (the output array is still built at full size).
        part = parts.get(id(self))
        if part is None:
            part = parts[id(self)] = predict(self, x.take(steps), *args, **kwargs)
        index = np.arange(rows) % len(part)
        return part[index]

    keras.Model.fit = bounded_fit
    keras.Model.predict = bounded_predict


def time_decoding(report: Path) -> None:
    """Wraps the job's images.load_images (train/ and test/ each call it once) to add up its
    wall time and files into `report` after each call."""
    from kgg.job import images as images_lib

    load_images = images_lib.load_images
    spent = {"decode_seconds": 0.0, "files": 0}

    def timed(root: Any, files: list[str], *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        result = load_images(root, files, *args, **kwargs)
        spent["decode_seconds"] += time.perf_counter() - started
        spent["files"] += len(files)
        report.write_text(json.dumps(spent))
        return result

    images_lib.load_images = timed


def main(argv: list[str]) -> int:
    steps = int(argv[0])
    if argv[1] != "--":
        raise SystemExit("usage: python -m bench.probe STEPS -- <kgg train arguments>")
    bound_keras(steps)
    if os.environ.get(REPORT_ENV):
        time_decoding(Path(os.environ[REPORT_ENV]))
    from kgg.cli.main import run as kgg_run

    return kgg_run(["train", *argv[2:]])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
