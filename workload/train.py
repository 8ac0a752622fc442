"""One training run from data to results, resumable after a kill at any point.

The phases (features, head, finetune for the fast recipe; guide for the 2018 one) checkpoint every
epoch through workload.runstate. A rerun of the same command continues from the last finished
epoch; a rerun of a finished run changes nothing.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from workload import data as data_lib
from workload import storage
from workload.config import TrainConfig
from workload.runstate import Run, SimulatedInterruption, is_done

MONITOR = "val_micro_f1"
# block5's share of VGG16's forward FLOPs (any input size; bench/flops.py counts them): the cost
# of a fine-tuning step on cached block4 maps relative to one on images, for the ETA.
LAST_BLOCK_SHARE = 0.1
# Block4 maps are predicted this many batches at a time: bounded float32 output per predict.
MAPS_CHUNK_BATCHES = 8
# Cached views of each training image for fine-tuning on block4 maps: as is, flipped left-right.
MAPS_VIEWS = 2


def _verbose() -> int:
    # A live progress bar in a terminal; one line per epoch in logs (journald, Cloud Logging).
    return 1 if sys.stdout.isatty() else 2


# --- Keras pieces (TensorFlow imported lazily) -------------------------------------------------


def _save_arrays(path: Path, arrays: list[np.ndarray]) -> None:
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, *arrays)
    tmp.replace(path)


def _load_arrays(path: Path) -> list[np.ndarray]:
    with np.load(path) as archive:
        return [archive[f"arr_{i}"] for i in range(len(archive.files))]


def _epoch_callback(run: Run, phase: str, epochs: int, n_train: int, eta_extra: float) -> Any:
    """Per epoch: history row, latest/best weights, early stopping, state, progress, backup."""
    import keras

    config = run.config
    ps = run.phase(phase)
    monitor = phase in {"head", "finetune"}
    latest = run.work / f"{phase}.latest.weights.h5"
    best = run.work / f"{phase}.best.npz"

    class EpochKeeper(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            logs = {k: float(v) for k, v in (logs or {}).items()}
            seconds = time.perf_counter() - self.started
            learning_rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            run.state["history"].append(
                {
                    "phase": phase,
                    "epoch": epoch + 1,
                    **logs,
                    "learning_rate": learning_rate,
                    "seconds": seconds,
                }
            )
            tmp = run.work / f"{phase}.latest.tmp.weights.h5"
            self.model.save_weights(tmp)
            tmp.replace(latest)
            ps["epochs_done"] = epoch + 1
            ps["seconds"] += seconds
            ps["images"] += n_train
            if monitor:
                value = logs.get(MONITOR, 0.0)
                if ps["best"] is None or value > ps["best"]:
                    ps["best"], ps["wait"] = value, 0
                    # Model weights only (no optimizer state): half the bytes to back up.
                    _save_arrays(best, self.model.get_weights())
                else:
                    ps["wait"] += 1
                    if ps["wait"] >= config.patience:
                        ps["stopped"] = True
                        self.model.stop_training = True
                        print(f"{phase}: {MONITOR} did not improve for {config.patience} epochs")
            run.save()
            remaining = 0 if ps["stopped"] else epochs - ps["epochs_done"]
            mean = ps["seconds"] / ps["epochs_done"] if ps["epochs_done"] else 0.0
            keys = ("loss", "accuracy", "val_loss", "val_accuracy", MONITOR)
            run.progress(
                "running",
                phase,
                ps["epochs_done"],
                epochs,
                {k: logs[k] for k in keys if k in logs},
                eta_seconds=round(remaining * mean + eta_extra, 1),
                images_per_second=round(ps["images"] / ps["seconds"], 2) if ps["seconds"] else None,
            )
            run.finished_epoch()

    return EpochKeeper()


def _compile(model: Any, optimizer: Any) -> None:
    import keras

    model.compile(
        optimizer=optimizer,
        loss="categorical_crossentropy",
        metrics=["accuracy", keras.metrics.F1Score(average="micro", name="micro_f1")],
    )


def _fit_phase(
    run: Run,
    runtime: Any,
    phase: str,
    model: Any,
    train_ds: Any,
    val_ds: Any,
    epochs: int,
    n_train: int,
    eta_extra: float = 0.0,
    baseline: float | None = None,
) -> None:
    """Fits one phase from where the backup left it; restores the best epoch when monitored.

    `baseline` is the monitored value of the weights the phase starts from: fine-tuning that
    never beats the head alone ends with the head's weights, not with a worse model."""
    ps = run.phase(phase)
    done_path = run.work / f"{phase}.done.npz"
    if ps["done"]:
        model.set_weights(_load_arrays(done_path))
        return
    latest = run.work / f"{phase}.latest.weights.h5"
    best = run.work / f"{phase}.best.npz"
    if baseline is not None and ps["best"] is None:
        _save_arrays(best, model.get_weights())
        ps["best"] = baseline
    if ps["epochs_done"] and latest.is_file():
        with runtime.strategy.scope():
            model.optimizer.build(model.trainable_variables)
        model.load_weights(latest)
        print(f"{phase}: continuing after epoch {ps['epochs_done']}/{epochs}")
    if ps["epochs_done"] < epochs and not ps["stopped"]:
        print(f"{phase}: {epochs} epochs on {n_train} images")
        model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=epochs,
            initial_epoch=ps["epochs_done"],
            callbacks=[_epoch_callback(run, phase, epochs, n_train, eta_extra)],
            verbose=_verbose(),
            shuffle=False,  # the tf.data pipeline shuffles
        )
    if phase != "guide" and best.is_file():
        model.set_weights(_load_arrays(best))
        print(f"{phase}: restored the best epoch ({MONITOR} {ps['best']:.4f})")
    _save_arrays(done_path, model.get_weights())
    ps["done"] = True
    run.save()


def _features(extractor: Any, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Pooled features of the frozen base, one forward pass (phase 1 trains on these).

    `images` may also be cached block4 maps, with `extractor` the last block + pooling."""
    ds = data_lib.make_dataset(images, np.zeros(len(images), np.int64), 1, batch_size)
    return extractor.predict(ds.map(lambda x, y: x), verbose=_verbose()).astype(np.float32)


def _block4_maps(
    trunk: Any, images: np.ndarray, batch_size: int, path: Path, views: int = 1
) -> None:
    """Writes the frozen trunk's maps of `images` (view 1: as they are, view 2: flipped left to
    right) to `path` as one float16 .npy, chunk by chunk: at full size the float32 output of one
    predict over the training set would be 1.5 GB, the float16 file is half that per view."""
    shape = (views * len(images), *trunk.output.shape[1:])
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)),
              "fortran_order": False, "shape": shape}  # fmt: skip
    tmp = path.with_name(f".{path.name}.tmp")
    chunk = MAPS_CHUNK_BATCHES * batch_size
    with tmp.open("wb") as handle:
        np.lib.format.write_array_header_2_0(handle, header)
        for view in range(views):
            for start in range(0, len(images), chunk):
                part = images[start : start + chunk]
                if view == 1:
                    part = part[:, :, ::-1]
                ds = data_lib.make_dataset(part, np.zeros(len(part), np.int64), 1, batch_size)
                out = trunk.predict(ds.map(lambda x, y: x), verbose=0)
                handle.write(out.astype(np.float16).tobytes())
    tmp.replace(path)


def train(config: TrainConfig) -> dict[str, Any]:
    """Runs (or resumes) the whole job and writes every result under config.out; returns metrics."""
    if is_done(config.out):
        metrics = storage.read_json(storage.join(config.out, "metrics.json")) or {}
        print(
            f"{config.out} is already done (validation micro-F1 "
            f"{metrics.get('micro_f1', float('nan')):.4f}); nothing to do. "
            "Use another --out for a new run."
        )
        return metrics
    run = Run(config)
    current = {"phase": "features" if config.recipe == "fast" else "guide"}
    try:
        return _train(run, current)
    except SimulatedInterruption:
        raise
    except Exception as error:
        phase = current["phase"]
        epochs = dict(run.config.phases()).get(phase, 1)
        message = f"{type(error).__name__}: {error}"
        run.progress("failed", phase, run.phase(phase)["epochs_done"], epochs, error=message)
        raise


def _train(run: Run, current: dict[str, str]) -> dict[str, Any]:
    from workload import model as model_lib
    from workload import runtime as runtime_lib

    config = run.config
    started = time.perf_counter()
    run.put("config.json", json.dumps(config.to_dict(), indent=2) + "\n")

    local_data = data_lib.fetch_data(config.data, config.cache_dir, config.workers, config.progress)
    dataset, class_names = data_lib.load_train(
        local_data, config.image_size, config.cache_dir, config.progress
    )
    test = data_lib.load_test(local_data, config.image_size, config.cache_dir, config.progress)
    run.put("class_names.json", json.dumps(class_names, indent=2) + "\n")
    n_classes = len(class_names)
    train_idx, val_idx = data_lib.stratified_split(dataset.labels, config.val_split, config.seed)
    x_train, y_train = dataset.images[train_idx], dataset.labels[train_idx]
    x_val, y_val = dataset.images[val_idx], dataset.labels[val_idx]
    # The split copied every image: drop the original (715 MB at full size) instead of holding
    # it until the results are written (only dataset.skipped is used from here on).
    # (A slice such as images[:0] would be a view keeping the whole buffer alive.)
    dataset.images = np.empty((0, *dataset.images.shape[1:]), dataset.images.dtype)
    weights = data_lib.class_weights(y_train, n_classes)
    print(
        f"data: {len(class_names)} classes, {len(x_train)} train / {len(x_val)} validation images, "
        f"{len(dataset.skipped)} skipped, test: {len(test.files) if test else 'none'}"
    )
    resolved = model_lib.resolve_weights(config.weights, config.cache_dir)
    # TensorFlow only now: a bad data folder or weights path fails in seconds, not after its import.
    runtime = runtime_lib.configure(config.seed)
    print(f"devices: {runtime.describe()}")

    if config.recipe == "guide":
        current["phase"] = "guide"
        model = _train_guide(run, runtime, resolved, x_train, y_train, x_val, y_val, n_classes)
    else:
        model = _train_fast(
            run, runtime, current, resolved, x_train, y_train, x_val, y_val, weights, n_classes
        )

    current["phase"] = "evaluate"
    run.progress("running", "evaluate", 0, 1)
    evaluated = time.perf_counter()
    val_probs = model.predict(
        data_lib.make_dataset(x_val, y_val, n_classes, runtime.batch(config.batch_size)), verbose=0
    )
    inference_seconds = time.perf_counter() - evaluated
    from workload.metrics import classification_metrics

    metrics = classification_metrics(y_val, np.argmax(val_probs, axis=1), class_names)
    submission = None
    if test is not None and len(test.files):
        test_probs = model.predict(
            data_lib.make_dataset(
                test.images,
                np.zeros(len(test.files), np.int64),
                n_classes,
                runtime.batch(config.batch_size),
            ),
            verbose=0,
        )
        from workload.report import predictions_csv

        submission = predictions_csv(test.files, test_probs, class_names)
    _write_results(
        run,
        model,
        metrics,
        class_names,
        dataset,
        test,
        submission,
        len(x_val) / max(inference_seconds, 1e-9),
        time.perf_counter() - started,
    )
    return metrics


def _train_guide(
    run: Run,
    runtime: Any,
    resolved: str | None,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    n_classes: int,
) -> Any:
    """The 2018 recipe: VGG with fc1/fc2, all layers trained with SGD, no augmentation."""
    import keras

    from workload import model as model_lib

    config = run.config
    ps = run.phase("guide")
    fresh = not ps["done"] and not ps["epochs_done"]
    with runtime.strategy.scope():
        base = model_lib.build_base(
            config.base, resolved if fresh else None, config.image_size, include_top=True
        )
        model = model_lib.build_guide_model(base, n_classes)
        # Keras 2's `decay=1e-6`: lr / (1 + decay * iterations), as a schedule in Keras 3.
        schedule = keras.optimizers.schedules.InverseTimeDecay(
            config.guide_lr, decay_steps=1, decay_rate=config.guide_decay
        )
        _compile(
            model,
            keras.optimizers.SGD(schedule, momentum=config.guide_momentum, nesterov=True),
        )
    train_ds = data_lib.make_dataset(
        x_train,
        y_train,
        n_classes,
        runtime.batch(config.batch_size),
        shuffle=True,
        seed=config.seed,
    )
    val_ds = data_lib.make_dataset(x_val, y_val, n_classes, runtime.batch(config.batch_size))
    _fit_phase(run, runtime, "guide", model, train_ds, val_ds, config.guide_epochs, len(x_train))
    return model


def _train_fast(
    run: Run,
    runtime: Any,
    current: dict[str, str],
    resolved: str | None,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    class_weights: np.ndarray,
    n_classes: int,
) -> Any:
    """Phase 1 on cached features of the frozen base, phase 2 fine-tuning its last block(s).

    With one block unfrozen (the default), nothing below block5 ever changes: the features phase
    caches the `block4_pool` maps of every image once, and phase 2 trains block5 + head on them
    (~5x faster per step than rerunning the frozen forward). Its augmentation is exact but
    limited to horizontal flips, cached as a second view of every training image: each further
    view (a vertical flip, a rotation) would cost one more frozen forward over the training set,
    and random rotations per step cannot be cached at all. With more blocks unfrozen, phase 2
    trains on images with flips and 90-degree rotations."""
    import keras

    from workload import model as model_lib

    config = run.config
    on_maps = config.unfreeze_blocks == 1
    views = MAPS_VIEWS if config.augment else 1
    ps = run.phase("features")
    base_path, features_path = run.work / "base.npz", run.work / "features.npz"
    with runtime.strategy.scope():
        base = model_lib.build_base(
            config.base, None if ps["done"] else resolved, config.image_size, include_top=False
        )
        base.trainable = False
        extractor = model_lib.build_feature_extractor(base)
        trunk = model_lib.build_frozen_trunk(base) if on_maps else None
        last_block = model_lib.build_last_block(base) if on_maps else None
    batch = runtime.batch(config.batch_size)
    maps: dict[str, np.ndarray] = {}

    def load_maps() -> dict[str, np.ndarray]:
        """The cached block4 maps; recomputed when missing (a resumed run on a fresh machine)."""
        if not maps:
            for name, images, n_views in (("train", x_train, views), ("val", x_val, 1)):
                path = run.local_only / f"maps.{name}.npy"
                if not path.is_file():
                    print(f"features: block4 maps of {len(images)} {name} images x {n_views}")
                    _block4_maps(trunk, images, batch, path, n_views)
                maps[name] = np.load(path)
        return maps

    if ps["done"]:
        base.set_weights(_load_arrays(base_path))
        with np.load(features_path) as cached:
            f_train, f_val = cached["train"], cached["val"]
    else:
        run.progress("running", "features", 0, 1)
        started = time.perf_counter()
        print(
            f"features: one pass of the frozen {config.base} over "
            f"{len(x_train) + len(x_val)} images"
        )
        if on_maps:
            load_maps()
            # Unaugmented features for the head: the first view, block5 + pooling on the maps.
            f_train = _features(last_block, maps["train"][: len(x_train)], batch)
            f_val = _features(last_block, maps["val"], batch)
            images = views * len(x_train) + len(x_val)
        else:
            f_train = _features(extractor, x_train, batch)
            f_val = _features(extractor, x_val, batch)
            images = len(x_train) + len(x_val)
        seconds = time.perf_counter() - started
        _save_arrays(base_path, base.get_weights())
        tmp = features_path.with_name(".features.tmp.npz")
        np.savez(tmp, train=f_train, val=f_val)
        tmp.replace(features_path)
        ps.update(done=True, epochs_done=1, seconds=seconds, images=images)
        run.save()
        run.progress(
            "running", "features", 1, 1, images_per_second=round(ps["images"] / seconds, 2)
        )
        run.finished_epoch()
    features_ips = ps["images"] / max(ps["seconds"], 1e-9)
    # A fine-tuning epoch costs about a forward pass over validation plus ~3 passes over train,
    # of the last block only on cached maps.
    share = LAST_BLOCK_SHARE if on_maps else 1.0
    finetune_epoch_estimate = share * (3 * len(x_train) + len(x_val)) / features_ips

    current["phase"] = "head"
    train_weights = class_weights[y_train]
    with runtime.strategy.scope():
        head = model_lib.build_head(f_train, n_classes, config.head_dropout)
        _compile(head, keras.optimizers.Adam(config.head_lr))
    head_train = data_lib.make_dataset(
        f_train, y_train, n_classes, batch, train_weights, shuffle=True, seed=config.seed
    )
    head_val = data_lib.make_dataset(f_val, y_val, n_classes, batch)
    _fit_phase(
        run,
        runtime,
        "head",
        head,
        head_train,
        head_val,
        config.head_epochs,
        len(f_train),
        eta_extra=config.finetune_epochs * finetune_epoch_estimate,
    )

    current["phase"] = "finetune"
    with runtime.strategy.scope():
        unfrozen = model_lib.unfreeze_last_blocks(base, config.unfreeze_blocks)
        # The full image -> probabilities model: evaluated and saved, whichever path trains it.
        model = model_lib.build_finetune_model(extractor, head)
        trained = model_lib.build_maps_model(last_block, head) if on_maps else model
        _compile(trained, keras.optimizers.Adam(config.finetune_lr))
    print(f"finetune: trainable {unfrozen}" + (" on cached block4 maps" if on_maps else ""))
    if config.finetune_epochs > 0:
        needs_data = not run.phase("finetune")["done"]
        if on_maps and needs_data:
            load_maps()
            train_ds = data_lib.make_dataset(
                maps["train"], y_train, n_classes, batch, train_weights,
                shuffle=True, seed=config.seed, views=views,
            )  # fmt: skip
            val_ds = data_lib.make_dataset(maps["val"], y_val, n_classes, batch)
        elif needs_data:
            train_ds = data_lib.make_dataset(
                x_train, y_train, n_classes, batch, train_weights,
                shuffle=True, augment=config.augment, seed=config.seed,
            )  # fmt: skip
            val_ds = data_lib.make_dataset(x_val, y_val, n_classes, batch)
        else:
            train_ds = val_ds = None
        _fit_phase(
            run,
            runtime,
            "finetune",
            trained,
            train_ds,
            val_ds,
            config.finetune_epochs,
            len(x_train),
            baseline=run.phase("head")["best"],
        )
    maps.clear()
    return model


def _write_results(
    run: Run,
    model: Any,
    metrics: dict[str, Any],
    class_names: list[str],
    dataset: data_lib.Dataset,
    test: data_lib.Dataset | None,
    submission: str | None,
    inference_ips: float,
    seconds_this_process: float,
) -> None:
    """Every result file, then progress.json "done" LAST: it is the finished-run marker."""
    from workload import model as model_lib
    from workload import report

    config = run.config
    skipped = dataset.skipped + (test.skipped if test else [])
    phases = run.state["phases"]
    metrics.update(
        class_names=class_names,
        skipped_files={"count": len(skipped), "files": skipped},
        images_per_second={
            **{
                name: round(p["images"] / p["seconds"], 2)
                for name, p in phases.items()
                if p["seconds"]
            },
            "inference": round(inference_ips, 2),
        },
        wall_seconds={
            **{name: round(p["seconds"], 2) for name, p in phases.items()},
            "this_process": round(seconds_this_process, 2),
        },
        epochs={name: p["epochs_done"] for name, p in phases.items()},
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
    run.put("metrics.json", json.dumps(metrics, indent=2) + "\n")
    run.state["done"] = True
    run.save()
    last = run.state["history"][-1] if run.state["history"] else {}
    run.progress(
        "done",
        "done",
        last.get("epoch", 0),
        last.get("epoch", 0),
        {k: metrics[k] for k in ("accuracy", "micro_f1", "macro_f1")},
        eta_seconds=0.0,
        images_per_second=metrics["images_per_second"].get("inference"),
    )
    print(
        f"done: validation accuracy {metrics['accuracy']:.4f}, micro-F1 {metrics['micro_f1']:.4f}, "
        f"macro-F1 {metrics['macro_f1']:.4f}; results in {config.out}"
    )
    # The backup only serves resuming; a finished run keeps its results, not hundreds of MB of
    # checkpoints. Removed after the "done" marker, so a kill in between only leaves litter.
    if run.remote_backup:
        storage.delete_prefix(run.backup_url)
    shutil.rmtree(run.work, ignore_errors=True)
