"""One training run from data to results, resumable after a kill at any point.

The phases (features, head, finetune for the fast recipe; guide for the 2018 one) checkpoint every
epoch through kgg.job.runstate. A rerun of the same command with the same data continues from
the last finished epoch, on the trajectory the uninterrupted run would have taken (each epoch's
data order, augmentation and dropout are drawn from the seed, the phase and the epoch alone); a
rerun of a finished run changes nothing. Other data or options never resume or report that run.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kgg.common import storage
from kgg.common.contract import METRIC_ID, METRICS_FILE
from kgg.job import console, folders
from kgg.job import images as images_lib
from kgg.job import splits as splits_lib
from kgg.job.config import TrainConfig
from kgg.job.recipes.inputs import Inputs
from kgg.job.runstate import (
    CheckpointError,
    Run,
    SimulatedInterruption,
    Terminated,
    fingerprint_of,
    finished_metrics,
)


def train(config: TrainConfig, restart: bool = False) -> dict[str, Any]:
    """Runs (or resumes) the whole job and writes every result under config.out; returns metrics.

    --out holding a run of other data or options raises RunMismatch, or with `restart` is
    replaced; so is a run whose checkpoint cannot be read (CheckpointError)."""
    from kgg.job import runtime as runtime_lib
    from kgg.job.metrics import headline

    listing = folders.list_data(config.data)  # once: the identity and the mirror agree
    identity = folders.data_identity(config.data, listing)
    fingerprint = fingerprint_of(config, identity.to_dict())
    finished = finished_metrics(config, fingerprint, restart)
    if finished is not None:
        print(
            f"{config.out} is already done ({headline(finished)}); nothing to do. "
            "Use another --out for a new run."
        )
        return finished
    run = Run(config, fingerprint, restart)
    first = "features" if config.recipe == "fast" else "guide"
    run.current_phase = first
    try:
        with runtime_lib.keeping_global_policy():
            try:
                return _train(run, listing)
            except CheckpointError as error:
                if not restart:
                    raise
                print(f"{error}: starting over (--restart)")
                run.start_over()
                run.current_phase = first
                return _train(run, listing)
    except SimulatedInterruption:
        raise  # a simulated hard kill: nothing is written, as after a real one
    except (Exception, Terminated) as error:
        if not run.state.get("done"):
            _report_stopped(run, error)
        raise


def _report_stopped(run: Run, error: BaseException) -> None:
    """progress.json of a run that stopped in its current phase: interrupted or failed."""
    phase = run.current_phase
    epochs = dict(run.config.phases()).get(phase, 1)
    done = run.phases[phase].epochs_done if phase in run.phases else 0
    if isinstance(error, Terminated):
        run.progress("interrupted", phase, done, epochs)
    else:
        message = f"{type(error).__name__}: {error}"
        run.progress("failed", phase, done, epochs, error=message)


@dataclass(frozen=True)
class _Split:
    """The decoded data split three ways: rows of the image cache on disk, no image copied."""

    dataset: images_lib.Dataset
    test: images_lib.Dataset | None
    class_names: list[str]
    warnings: list[str]
    inputs: Inputs
    x_hold: Any
    y_hold: np.ndarray


def _prepare(run: Run, listing: list[storage.ObjectInfo] | None) -> _Split:
    """The data fetched, decoded and split, with split.csv and class_names.json written."""
    config = run.config
    local_data = folders.fetch_data(
        config.data, config.cache_dir, config.workers, config.progress, listing
    )
    # The test set first: duplicate submission names fail before the long decode of train/.
    test = images_lib.load_test(local_data, config.image_size, config.cache_dir, config.progress)
    dataset, class_names = images_lib.load_train(
        local_data, config.image_size, config.cache_dir, config.progress
    )
    warnings = splits_lib.few_image_warnings(dataset.labels, class_names)
    for line in warnings:
        console.warn(line)
    run.put("class_names.json", json.dumps(class_names, indent=2) + "\n")
    n_classes = len(class_names)
    splits = splits_lib.three_way_split(
        dataset.labels, config.val_split, config.holdout, config.seed
    )
    if not len(splits[1]):
        raise folders.DataError(
            f"no class under {config.data} has 2 images to spare for validation; add images"
        )
    train_dir, _ = folders.find_split_dirs(local_data)
    run.put("split.csv", _split_csv(train_dir.name, dataset, class_names, splits))
    # Rows of the image cache on disk: the split copies no image.
    (x_train, y_train), (x_val, y_val), (x_hold, y_hold) = (
        (dataset.images.subset(rows), dataset.labels[rows]) for rows in splits
    )
    weights = splits_lib.class_weights(y_train, n_classes)
    print(
        f"data: {len(class_names)} classes, {len(x_train)} train / {len(x_val)} validation / "
        f"{len(x_hold)} held-out images, {len(dataset.skipped)} skipped, "
        f"test: {len(test.files) if test else 'none'}"
    )
    inputs = Inputs(x_train, y_train, x_val, y_val, weights, n_classes)
    return _Split(dataset, test, class_names, warnings, inputs, x_hold, y_hold)


def _train(run: Run, listing: list[storage.ObjectInfo] | None) -> dict[str, Any]:
    from kgg.job import model as model_lib
    from kgg.job import runtime as runtime_lib
    from kgg.job.recipes.fast import FastRecipe
    from kgg.job.recipes.guide import train_guide

    config = run.config
    started = time.perf_counter()
    run.put("config.json", json.dumps(config.to_dict(), indent=2) + "\n")
    split = _prepare(run, listing)
    resolved = model_lib.resolve_weights(config.weights, config.cache_dir)
    # TensorFlow only now: a bad data folder or weights path fails in seconds, not after its import.
    runtime = runtime_lib.configure(config.seed, config.precision)
    print(f"devices: {runtime.describe()}")

    if config.recipe == "guide":
        model = train_guide(run, runtime, resolved, split.inputs)
    else:
        model = FastRecipe(run, runtime, resolved, split.inputs).train()

    run.current_phase = "evaluate"
    metrics, inference_ips, submission = _score(run, runtime, model, split)
    _write_results(
        run, model, metrics, split, submission, inference_ips, time.perf_counter() - started
    )
    return metrics


def _score(
    run: Run, runtime: Any, model: Any, split: _Split
) -> tuple[dict[str, Any], float, str | None]:
    """The metrics (held-out, else validation), the inference rate on validation, and the test
    set's submission.csv (None without test images)."""
    from kgg.job import model as model_lib
    from kgg.job.metrics import summary

    config, inputs, class_names = run.config, split.inputs, split.class_names
    run.progress("running", "evaluate", 0, 1)
    batch = runtime.batch(config.batch_size)
    evaluated = time.perf_counter()
    validation = _evaluate(runtime, model, inputs.x_val, inputs.y_val, class_names, batch)
    inference_seconds = time.perf_counter() - evaluated
    # The headline: the held-out split, which nothing was chosen on (validation picked the fast
    # recipe's best epochs and stopped it early); validation only without one.
    held_out = len(split.x_hold) > 0
    metrics = (
        _evaluate(runtime, model, split.x_hold, split.y_hold, class_names, batch)
        if held_out
        else validation
    )
    metrics["scored_on"] = "holdout" if held_out else "validation"
    metrics["validation"] = {**summary(validation), "chose_epochs": config.recipe == "fast"}
    metrics["warnings"] = split.warnings
    metrics["data"] = run.fingerprint["data"]
    # This process's policy: a run resumed elsewhere may have trained its phases in another.
    metrics["precision"] = runtime.precision.policy
    submission = None
    test = split.test
    if test is not None and len(test.files):
        test_probs = model_lib.predict(model, test.images, batch, jit_compile=runtime.jit_compile)
        from kgg.job.report import predictions_csv

        submission = predictions_csv(test.files, test_probs, class_names)
    return metrics, len(inputs.x_val) / max(inference_seconds, 1e-9), submission


def _evaluate(
    runtime: Any,
    model: Any,
    images: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    batch: int,
) -> dict[str, Any]:
    """classification_metrics of the model's predictions on one labelled set."""
    from kgg.job import model as model_lib
    from kgg.job.metrics import classification_metrics

    probs = model_lib.predict(model, images, batch, jit_compile=runtime.jit_compile)
    return classification_metrics(labels, np.argmax(probs, axis=1), class_names)


def _split_csv(
    train_dir: str,
    dataset: images_lib.Dataset,
    class_names: list[str],
    splits: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> str:
    """`file,class,split`: which images trained, chose (validation) and scored (holdout)."""
    assigned: dict[int, str] = {}
    for name, rows in zip(("train", "validation", "holdout"), splits, strict=True):
        assigned.update(dict.fromkeys(rows.tolist(), name))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", "class", "split"])
    for row, name in enumerate(dataset.files):
        writer.writerow([f"{train_dir}/{name}", class_names[dataset.labels[row]], assigned[row]])
    return buffer.getvalue()


def _write_results(
    run: Run,
    model: Any,
    metrics: dict[str, Any],
    split: _Split,
    submission: str | None,
    inference_ips: float,
    seconds_this_process: float,
) -> None:
    """Every result file, then progress.json "done" LAST: it is the finished-run marker."""
    from kgg.job import model as model_lib
    from kgg.job import report

    config, class_names, test = run.config, split.class_names, split.test
    skipped = split.dataset.skipped + (test.skipped if test else [])
    phases = run.phases
    metrics.update(
        class_names=class_names,
        skipped_files={"count": len(skipped), "files": skipped},
        images_per_second={
            **{name: round(p.images / p.seconds, 2) for name, p in phases.items() if p.seconds},
            "inference": round(inference_ips, 2),
        },
        wall_seconds={
            **{name: round(p.seconds, 2) for name, p in phases.items()},
            "this_process": round(seconds_this_process, 2),
        },
        epochs={name: p.epochs_done for name, p in phases.items()},
        test_images=len(test.files) if test else 0,
    )
    with tempfile.TemporaryDirectory(prefix="kgg-results-") as staging:
        results = Path(staging)
        model_lib.inference_copy(model).save(results / "model.keras")
        report.plot_confusion_matrix(
            metrics["confusion_matrix"], class_names, results / "confusion_matrix.png"
        )
        report.plot_training_curves(run.state["history"], results / "training_curves.png")
        for name in ("model.keras", "confusion_matrix.png", "training_curves.png"):
            storage.upload_file(results / name, storage.join(config.out, name))
    run.put("history.csv", report.history_csv(run.state["history"]))
    if submission is not None:
        run.put("submission.csv", submission)
    run.put(METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
    run.state["done"] = True
    run.save()
    last = run.state["history"][-1] if run.state["history"] else {}
    run.progress(
        "done",
        "done",
        last.get("epoch", 0),
        last.get("epoch", 0),
        {k: metrics[k] for k in ("accuracy", METRIC_ID, "macro_f1", "scored_on")},
        eta_seconds=0.0,
        images_per_second=metrics["images_per_second"].get("inference"),
    )
    from kgg.job.metrics import headline

    print(f"done: {headline(metrics)}; results in {config.out}")
    # The backup only serves resuming; a finished run keeps its results, not hundreds of MB of
    # checkpoints. Removed after the "done" marker, so a kill in between only leaves litter.
    if run.remote_backup:
        storage.delete_prefix(run.backup_url)
    shutil.rmtree(run.work, ignore_errors=True)
