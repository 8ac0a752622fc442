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
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from kgg.common import storage
from kgg.job import arrays, diskspace, tensorboard
from kgg.job import data as data_lib
from kgg.job.atomic import atomic_path
from kgg.job.config import TrainConfig
from kgg.job.runstate import (
    CheckpointError,
    Run,
    SimulatedInterruption,
    Terminated,
    fingerprint_of,
    finished_metrics,
)

MONITOR = "val_micro_f1"
# Second component of each phase's random seed: the phases draw apart from each other.
PHASE_STREAMS = {"head": 1, "finetune": 2, "guide": 3}
# block5's share of VGG16's forward FLOPs (any input size; bench/flops.py counts them): the cost
# of a fine-tuning step on cached block4 maps relative to one on images, for the ETA.
LAST_BLOCK_SHARE = 0.1
# Block4 maps are predicted this many batches at a time: bounded float32 output per predict.
MAPS_CHUNK_BATCHES = 8
# Cached views of each training image for fine-tuning on block4 maps: as is, flipped left-right.
MAPS_VIEWS = 2
# What block4 maps are stored as outside mixed_bfloat16 (see maps_dtype).
MAPS_DTYPE = np.dtype(np.float16)


def _verbose() -> int:
    # A live progress bar in a terminal; one line per epoch in logs (journald, Cloud Logging).
    return 1 if sys.stdout.isatty() else 2


# --- Keras pieces (TensorFlow imported lazily) -------------------------------------------------


def _save_arrays(path: Path, arrays: list[np.ndarray]) -> None:
    with atomic_path(path) as tmp:
        np.savez(tmp, *arrays)


def _load_arrays(run: Run, path: Path) -> list[np.ndarray]:
    """A checkpoint's arrays; CheckpointError naming it when it is missing or unreadable."""
    try:
        with np.load(path) as archive:
            return [archive[f"arr_{i}"] for i in range(len(archive.files))]
    except (OSError, ValueError, EOFError, KeyError) as error:  # BadZipFile is an OSError
        raise run.corrupt(path, error) from error


def _latest_weights(run: Run, phase: str, epochs_done: int) -> Path:
    """Where the weights after `epochs_done` epochs are: two slots written in turn, so a kill
    between writing an epoch's weights and its state.json leaves the weights that state.json
    names untouched, locally and in the bucket."""
    return run.work / f"{phase}.latest.{epochs_done % 2}.weights.h5"


def _epoch_callback(
    run: Run, phase: str, epochs: int, n_train: int, eta_extra: float, seed: tuple[int, ...]
) -> Any:
    """Per epoch: history row, latest/best weights, early stopping, state, progress, backup."""
    import keras

    from kgg.job import model as model_lib

    config = run.config
    ps = run.phase(phase)
    monitor = phase in {"head", "finetune"}
    best = run.work / f"{phase}.best.npz"

    class EpochKeeper(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.started = time.perf_counter()
            model_lib.reseed_random_layers(self.model, (*seed, epoch, 0, 0))

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
            with atomic_path(_latest_weights(run, phase, epoch + 1)) as tmp:
                self.model.save_weights(tmp)
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


def compile_model(model: Any, optimizer: Any, jit_compile: bool = False) -> None:
    """Loss and metrics of every phase. Under mixed_float16 Keras wraps the optimizer in a
    LossScaleOptimizer (compile's auto_scale_loss); bfloat16 needs no loss scaling."""
    import keras

    model.compile(
        optimizer=optimizer,
        loss="categorical_crossentropy",
        metrics=["accuracy", keras.metrics.F1Score(average="micro", name="micro_f1")],
        jit_compile=jit_compile,
    )


# Builds a phase's data for the epochs still to run and the phase's seed: (training batches,
# steps per epoch, validation batches); called only when the phase trains (it may compute maps).
Batches = Callable[[range, tuple[int, ...]], tuple[Any, int, Any]]


def _fit_phase(
    run: Run,
    runtime: Any,
    phase: str,
    model: Any,
    batches: Batches,
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
        model.set_weights(_load_arrays(run, done_path))
        return
    best = run.work / f"{phase}.best.npz"
    if baseline is not None and ps["best"] is None:
        _save_arrays(best, model.get_weights())
        ps["best"] = baseline
    if ps["epochs_done"]:
        latest = _latest_weights(run, phase, ps["epochs_done"])
        with runtime.strategy.scope():
            model.optimizer.build(model.trainable_variables)
        try:
            model.load_weights(latest)
        except (OSError, ValueError, KeyError) as error:
            raise run.corrupt(latest, error) from error
        print(f"{phase}: continuing after epoch {ps['epochs_done']}/{epochs}")
    if ps["epochs_done"] < epochs and not ps["stopped"]:
        print(f"{phase}: {epochs} epochs on {n_train} images")
        seed = (run.config.seed, PHASE_STREAMS[phase])
        train_ds, steps, val_ds = batches(range(ps["epochs_done"], epochs), seed)
        model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=epochs,
            initial_epoch=ps["epochs_done"],
            steps_per_epoch=steps,
            callbacks=[
                # Before the epoch's state is saved: a kill right after finds its scalars synced.
                *filter(None, [tensorboard.callback(run, phase)]),
                _epoch_callback(run, phase, epochs, n_train, eta_extra, seed),
            ],
            verbose=_verbose(),
            shuffle=False,  # each epoch's order is drawn by the dataset (data.epoch_rows)
        )
    if phase != "guide" and best.is_file():
        model.set_weights(_load_arrays(run, best))
        print(f"{phase}: restored the best epoch ({MONITOR} {ps['best']:.4f})")
    _save_arrays(done_path, model.get_weights())
    ps["done"] = True
    run.save()


def pooled_features(
    extractor: Any, images: np.ndarray, batch_size: int, jit_compile: bool = False
) -> np.ndarray:
    """Pooled features of the frozen base, one forward pass (phase 1 trains on these).

    `images` may also be cached block4 maps, with `extractor` the last block + pooling."""
    from kgg.job import model as model_lib

    features = model_lib.predict(extractor, images, batch_size, _verbose(), jit_compile)
    return features.astype(np.float32)


def maps_dtype(policy: str) -> np.dtype:
    """What cached block4 maps are stored as: bfloat16 under mixed_bfloat16 (the trunk's own
    output; float16's range ends at 65504), else float16 (the trunk's output under
    mixed_float16; under float32 half the bytes of it, 1.5 GB less at full size, for rounding
    far below what the fine-tuned block5 resolves)."""
    if policy == "mixed_bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return MAPS_DTYPE


def maps_bytes(trunk: Any, rows: int, dtype: np.dtype) -> int:
    """The size of the cached maps file of `rows` maps of `trunk`'s output."""
    return arrays.file_bytes((rows, *trunk.output.shape[1:]), _stored(dtype))


def _stored(dtype: np.dtype) -> np.dtype:
    # bfloat16 is written as its uint16 bits, which numpy reads back without ml_dtypes.
    return np.dtype(np.uint16) if dtype.name == "bfloat16" else dtype


def write_frozen_maps(
    trunk: Any,
    images: Any,
    batch_size: int,
    path: Path,
    views: int = 1,
    dtype: np.dtype = MAPS_DTYPE,
    jit_compile: bool = False,
) -> None:
    """Writes the frozen trunk's maps of `images` (view 1: as they are, view 2: flipped left to
    right) to `path` as one 16-bit .npy (`dtype`, see maps_dtype), chunk by chunk into a file
    whose blocks are reserved first (a disk too small fails before the first forward pass, with
    OSError ENOSPC): at full size the float32 output of one predict over the training set would
    be 1.5 GB, the 16-bit file is half that per view, and neither is ever held in memory."""
    from kgg.job import model as model_lib

    stored = _stored(dtype)
    shape = (views * len(images), *trunk.output.shape[1:])
    chunk = MAPS_CHUNK_BATCHES * batch_size
    with atomic_path(path) as tmp:
        target = arrays.create(tmp, shape, stored)
        fd = os.open(tmp, os.O_WRONLY)
        try:
            for view in range(views):
                for start in range(0, len(images), chunk):
                    part = arrays.rows_of(images, start, start + chunk)
                    if view == 1:
                        part = part[:, :, ::-1]
                    out = model_lib.predict(trunk, part, batch_size, jit_compile=jit_compile)
                    target.write(fd, view * len(images) + start, out.astype(dtype).view(stored))
        finally:
            os.close(fd)


def train(config: TrainConfig, restart: bool = False) -> dict[str, Any]:
    """Runs (or resumes) the whole job and writes every result under config.out; returns metrics.

    --out holding a run of other data or options raises RunMismatch, or with `restart` is
    replaced; so is a run whose checkpoint cannot be read (CheckpointError)."""
    from kgg.job import runtime as runtime_lib
    from kgg.job.metrics import headline

    listing = data_lib.list_data(config.data)  # once: the identity and the mirror agree
    identity = data_lib.data_identity(config.data, listing)
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
    current = {"phase": first}
    try:
        with runtime_lib.keeping_global_policy():
            try:
                return _train(run, current, listing)
            except CheckpointError as error:
                if not restart:
                    raise
                print(f"{error}: starting over (--restart)")
                run.start_over()
                current["phase"] = first
                return _train(run, current, listing)
    except SimulatedInterruption:
        raise  # a simulated hard kill: nothing is written, as after a real one
    except (Exception, Terminated) as error:
        if not run.state.get("done"):
            phase = current["phase"]
            epochs = dict(config.phases()).get(phase, 1)
            done = run.phase(phase)["epochs_done"] if phase in run.state["phases"] else 0
            if isinstance(error, Terminated):
                run.progress("interrupted", phase, done, epochs)
            else:
                message = f"{type(error).__name__}: {error}"
                run.progress("failed", phase, done, epochs, error=message)
        raise


def _train(
    run: Run, current: dict[str, str], listing: list[storage.ObjectInfo] | None
) -> dict[str, Any]:
    from kgg.job import model as model_lib
    from kgg.job import runtime as runtime_lib

    config = run.config
    started = time.perf_counter()
    run.put("config.json", json.dumps(config.to_dict(), indent=2) + "\n")

    local_data = data_lib.fetch_data(
        config.data, config.cache_dir, config.workers, config.progress, listing
    )
    # The test set first: duplicate submission names fail before the long decode of train/.
    test = data_lib.load_test(local_data, config.image_size, config.cache_dir, config.progress)
    dataset, class_names = data_lib.load_train(
        local_data, config.image_size, config.cache_dir, config.progress
    )
    warnings = data_lib.few_image_warnings(dataset.labels, class_names)
    for line in warnings:
        data_lib.warn(line)
    run.put("class_names.json", json.dumps(class_names, indent=2) + "\n")
    n_classes = len(class_names)
    splits = data_lib.three_way_split(dataset.labels, config.val_split, config.holdout, config.seed)
    if not len(splits[1]):
        raise data_lib.DataError(
            f"no class under {config.data} has 2 images to spare for validation; add images"
        )
    train_dir, _ = data_lib.find_split_dirs(local_data)
    run.put("split.csv", _split_csv(train_dir.name, dataset, class_names, splits))
    # Rows of the image cache on disk: the split copies no image.
    (x_train, y_train), (x_val, y_val), (x_hold, y_hold) = (
        (dataset.images.subset(rows), dataset.labels[rows]) for rows in splits
    )
    weights = data_lib.class_weights(y_train, n_classes)
    print(
        f"data: {len(class_names)} classes, {len(x_train)} train / {len(x_val)} validation / "
        f"{len(x_hold)} held-out images, {len(dataset.skipped)} skipped, "
        f"test: {len(test.files) if test else 'none'}"
    )
    resolved = model_lib.resolve_weights(config.weights, config.cache_dir)
    # TensorFlow only now: a bad data folder or weights path fails in seconds, not after its import.
    runtime = runtime_lib.configure(config.seed, config.precision)
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
    batch = runtime.batch(config.batch_size)
    evaluated = time.perf_counter()
    validation = _evaluate(runtime, model, x_val, y_val, class_names, batch)
    inference_seconds = time.perf_counter() - evaluated
    from kgg.job.metrics import summary

    # The headline: the held-out split, which nothing was chosen on (validation picked the fast
    # recipe's best epochs and stopped it early); validation only without one.
    metrics = (
        _evaluate(runtime, model, x_hold, y_hold, class_names, batch) if len(x_hold) else validation
    )
    metrics["scored_on"] = "holdout" if len(x_hold) else "validation"
    metrics["validation"] = {**summary(validation), "chose_epochs": config.recipe == "fast"}
    metrics["warnings"] = warnings
    metrics["data"] = run.fingerprint["data"]
    # This process's policy: a run resumed elsewhere may have trained its phases in another.
    metrics["precision"] = runtime.precision.policy
    submission = None
    if test is not None and len(test.files):
        test_probs = model_lib.predict(model, test.images, batch, jit_compile=runtime.jit_compile)
        from kgg.job.report import predictions_csv

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
    dataset: data_lib.Dataset,
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

    from kgg.job import model as model_lib

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
        compile_model(
            model,
            keras.optimizers.SGD(schedule, momentum=config.guide_momentum, nesterov=True),
            runtime.jit_compile,
        )
    batch = runtime.batch(config.batch_size)

    def batches(epochs: range, seed: tuple[int, ...]) -> tuple[Any, int, Any]:
        train_ds, steps = data_lib.training_dataset(
            x_train, y_train, n_classes, batch, None, seed, epochs
        )
        return train_ds, steps, data_lib.make_dataset(x_val, y_val, n_classes, batch)

    _fit_phase(run, runtime, "guide", model, batches, config.guide_epochs, len(x_train))
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

    from kgg.job import model as model_lib

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
    xla = runtime.jit_compile
    policy = runtime.precision.policy
    dtype = maps_dtype(policy)
    maps: dict[str, Any] = {}

    def load_maps() -> dict[str, Any]:
        """The cached block4 maps, read by row; recomputed when missing (a resumed run on
        a fresh machine), unreadable, or made at another precision (the policy is in the file
        name). They live in the run's work folder, which only ever holds one run; the disk
        space of those still to make is checked first, for both at once."""
        if maps:
            return maps
        wanted = (("train", x_train, views), ("val", x_val, 1))
        missing = []
        for name, images, n_views in wanted:
            path = run.local_only / f"maps.{name}.{policy}.npy"
            maps[name] = read_cached_maps(path, len(images) * n_views, dtype)
            if not len(maps[name]):
                for other in run.local_only.glob(f"maps.{name}.*.npy"):
                    other.unlink()  # made at another precision: never used, 1 GB+ of disk
                missing.append((name, images, n_views, path))
        needs = [
            diskspace.Need(
                run.local_only, maps_bytes(trunk, len(images) * n_views, dtype),
                f"the block4 maps of {len(images)} {name} images x {n_views}", run.work_option,
            )
            for name, images, n_views, _ in missing
        ]  # fmt: skip
        diskspace.require(needs)
        for (name, images, n_views, path), need in zip(missing, needs, strict=True):
            print(f"features: block4 maps of {len(images)} {name} images x {n_views}")
            try:
                write_frozen_maps(trunk, images, batch, path, n_views, dtype, xla)
            except OSError as error:
                if diskspace.is_full(error):
                    raise diskspace.full(need, error) from error
                raise
            maps[name] = read_cached_maps(path, len(images) * n_views, dtype)
        return maps

    if ps["done"]:
        base.set_weights(_load_arrays(run, base_path))
        try:
            with np.load(features_path) as cached:
                f_train, f_val = cached["train"], cached["val"]
        except (OSError, ValueError, EOFError, KeyError) as error:
            raise run.corrupt(features_path, error) from error
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
            f_train = pooled_features(last_block, maps["train"][: len(x_train)], batch, xla)
            f_val = pooled_features(last_block, maps["val"], batch, xla)
            images = views * len(x_train) + len(x_val)
        else:
            f_train = pooled_features(extractor, x_train, batch, xla)
            f_val = pooled_features(extractor, x_val, batch, xla)
            images = len(x_train) + len(x_val)
        seconds = time.perf_counter() - started
        _save_arrays(base_path, base.get_weights())
        with atomic_path(features_path) as tmp:
            np.savez(tmp, train=f_train, val=f_val)
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
        compile_model(head, keras.optimizers.Adam(config.head_lr), xla)

    def head_batches(epochs: range, seed: tuple[int, ...]) -> tuple[Any, int, Any]:
        train_ds, steps = data_lib.training_dataset(
            f_train, y_train, n_classes, batch, train_weights, seed, epochs
        )
        return train_ds, steps, data_lib.make_dataset(f_val, y_val, n_classes, batch)

    _fit_phase(
        run,
        runtime,
        "head",
        head,
        head_batches,
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
        compile_model(trained, keras.optimizers.Adam(config.finetune_lr), xla)
    print(f"finetune: trainable {unfrozen}" + (" on cached block4 maps" if on_maps else ""))

    def finetune_batches(epochs: range, seed: tuple[int, ...]) -> tuple[Any, int, Any]:
        if on_maps:
            load_maps()
            train_ds, steps = data_lib.training_dataset(
                maps["train"], y_train, n_classes, batch, train_weights, seed, epochs,
                views=views,
            )  # fmt: skip
            return train_ds, steps, data_lib.make_dataset(maps["val"], y_val, n_classes, batch)
        train_ds, steps = data_lib.training_dataset(
            x_train, y_train, n_classes, batch, train_weights, seed, epochs,
            augment=config.augment,
        )  # fmt: skip
        return train_ds, steps, data_lib.make_dataset(x_val, y_val, n_classes, batch)

    if config.finetune_epochs > 0:
        _fit_phase(
            run,
            runtime,
            "finetune",
            trained,
            finetune_batches,
            config.finetune_epochs,
            len(x_train),
            baseline=run.phase("head")["best"],
        )
    maps.clear()
    return model


def read_cached_maps(path: Path, rows: int, dtype: np.dtype) -> Any:
    """The maps cached at `path` as `dtype`, read when gathered (arrays.DiskRows), when
    they are whole and have `rows` rows; else an empty array (a missing file, or one a kill or
    full disk left unreadable: deleted, computed again)."""
    if not path.is_file():
        return np.empty(0)
    try:
        maps = arrays.DiskRows.open(path)
        if len(maps) != rows or maps.dtype.itemsize != dtype.itemsize:
            raise ValueError(f"{len(maps)} rows of {maps.dtype}, expected {rows} of {dtype}")
        return maps.view(dtype)
    except (OSError, ValueError) as error:  # ArrayFileError: a ValueError
        data_lib.warn(f"cached maps {path} are unreadable ({error}); deleted, computing again")
        path.unlink(missing_ok=True)
        return np.empty(0)


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
    from kgg.job import model as model_lib
    from kgg.job import report

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
        {k: metrics[k] for k in ("accuracy", "micro_f1", "macro_f1", "scored_on")},
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
