"""The timed measurements, each on the project's own code paths (kgg.job.images, .pipeline,
.model, .fitting, .maps), and on keras.applications.VGG16 for the FLOP/s figures.

Long phases are timed on a fixed number of steps after one warm-up step (which pays for tracing)
and extrapolated by the callers. TensorFlow is imported only inside the functions.
"""

from __future__ import annotations

import contextlib
import gc
import io
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kgg.job import folders, pipeline
from kgg.job import images as images_lib
from kgg.job import splits as splits_lib
from kgg.job.arrays import DiskRows, Rows

IMAGE_SIZE = 224
BATCH = 32


@dataclass(frozen=True)
class Steps:
    """Seconds per step (mean over the timed steps, warm-up excluded) and images per second."""

    seconds_per_step: float
    steps: int
    batch: int
    # Wall-clock (time.time) span of the timed steps: GPU utilisation samples are cut to it.
    window: tuple[float, float] | None = None
    # CPU seconds this process got per wall second while timed: below the core count means
    # other processes took a share of the machine (or the step does not use every core).
    cpus_used: float | None = None

    @property
    def images_per_second(self) -> float:
        return self.batch / self.seconds_per_step


@contextlib.contextmanager
def precision(policy: str) -> Iterator[None]:
    """Builds every model of the block in Keras dtype policy `policy`, as runtime.configure
    makes the job do; the global policy is put back afterwards."""
    from kgg.job import runtime

    with runtime.keeping_global_policy():
        runtime.set_policy(policy)
        yield


def clear_session() -> None:
    import keras

    keras.backend.clear_session()
    gc.collect()


def _batch_clock() -> Any:
    import keras

    class BatchClock(keras.callbacks.Callback):
        """End time of every training batch; reading the loss forces the step to finish (GPU)."""

        def __init__(self) -> None:
            super().__init__()
            self.ends: list[float] = []
            self.walls: list[float] = []
            self.cpu: list[float] = []

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            if logs and "loss" in logs:
                float(logs["loss"])
            self.ends.append(time.perf_counter())
            self.walls.append(time.time())
            self.cpu.append(time.process_time())

    return BatchClock()


def fit_steps(model: Any, dataset: Any, steps: int, batch: int) -> Steps:
    """Times `steps` training steps of model.fit after one warm-up step (the job's fit path)."""
    clock = _batch_clock()
    # shuffle=False as in the job: the dataset draws its own order (fit's default only warns).
    model.fit(dataset.take(steps + 1), epochs=1, verbose=0, shuffle=False, callbacks=[clock])
    ends = clock.ends
    if len(ends) < 2:
        raise ValueError(f"fit ran {len(ends)} steps; need at least 2 (warm-up + 1 timed)")
    window = (clock.walls[0], clock.walls[-1])
    cpus = (clock.cpu[-1] - clock.cpu[0]) / (ends[-1] - ends[0])
    return Steps((ends[-1] - ends[0]) / (len(ends) - 1), len(ends) - 1, batch, window, cpus)


# --- 1. input pipeline --------------------------------------------------------------------------


@dataclass(frozen=True)
class PipelineResult:
    images: int
    first_epoch_s: float
    cache_load_s: float
    cached_epoch_s: float
    augmented_epoch_s: float


def input_pipeline(
    data_root: Path, cache_dir: Path, n_classes: int, size: int = IMAGE_SIZE
) -> tuple[PipelineResult, DiskRows, np.ndarray]:
    """First epoch = the job's decode+resize of every training image into its cache
    (images.load_images on a cold cache); cached epoch = one pass of the job's tf.data pipeline
    (pipeline.training_dataset: epoch order, batch, cast) gathering its rows from the reopened
    cache on disk, as training reads it.

    Returns the figures and the decoded images (rows on disk) and labels for the later
    measurements."""
    train_dir, _ = folders.find_split_dirs(data_root)
    files, labels, _, _ = folders.discover_train(train_dir)
    shutil.rmtree(cache_dir / "images", ignore_errors=True)
    started = time.perf_counter()
    images, ok, _ = images_lib.load_images(train_dir, files, size, cache_dir, progress=False)
    first = time.perf_counter() - started
    del images
    gc.collect()

    started = time.perf_counter()
    images, ok, _ = images_lib.load_images(train_dir, files, size, cache_dir, progress=False)
    cache_load = time.perf_counter() - started
    y = np.asarray(labels, np.int64)[ok]

    def one_pass(augment: bool) -> float:
        began = time.perf_counter()
        ds, _ = pipeline.training_dataset(
            images, y, n_classes, BATCH, None, (0,), range(1), augment=augment
        )
        for _ in ds:
            pass
        return time.perf_counter() - began

    one_pass(False)  # the first pass pays for TensorFlow's start-up, not the pipeline
    cached = one_pass(False)
    augmented = one_pass(True)
    return PipelineResult(len(ok), first, cache_load, cached, augmented), images, y


# --- 2. training throughput on the job's models -------------------------------------------------


def _dataset(
    images: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    sample_weights: np.ndarray | None = None,
    shuffle: bool = False,
    **kwargs: Any,
) -> Any:
    """The job's training batches (one epoch) with `shuffle`, else its evaluation batches."""
    if not shuffle:
        return pipeline.make_dataset(images, labels, n_classes, BATCH, sample_weights)
    dataset, _ = pipeline.training_dataset(
        images, labels, n_classes, BATCH, sample_weights, (0,), range(1), **kwargs
    )
    return dataset


def _repeat_to(images: Rows, labels: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    index = np.arange(count) % len(images)
    return images[index], labels[index]


def guide_steps(
    images: Rows, labels: np.ndarray, n_classes: int, steps: int, jit_compile: bool = False
) -> Steps:
    """The guide recipe's training step: VGG16 with fc1/fc2, every layer trainable, SGD+nesterov,
    built and compiled by the job's own functions (weights=None: speed does not depend on them)."""
    size = images.shape[1]
    import keras

    from kgg.job import fitting
    from kgg.job import model as model_lib

    x, y = _repeat_to(images, labels, (steps + 1) * BATCH)
    model = model_lib.build_guide_model(
        model_lib.build_base("vgg16", None, size, include_top=True), n_classes
    )
    schedule = keras.optimizers.schedules.InverseTimeDecay(1e-3, decay_steps=1, decay_rate=1e-6)
    optimizer = keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True)
    fitting.compile_model(model, optimizer, jit_compile)
    result = fit_steps(model, _dataset(x, y, n_classes, shuffle=True), steps, BATCH)
    del model
    clear_session()
    return result


def feature_steps(
    images: Rows, steps: int, policy: str = "float32", jit_compile: bool = False
) -> tuple[Steps, Steps, np.ndarray]:
    """Phase 1 exactly as the job runs it with one block to fine-tune: train.write_frozen_maps (the
    frozen trunk's block4_pool maps, chunked model.predict into a 16-bit .npy of the policy's
    maps dtype) on steps x 32 images after a one-batch warm-up, then train.pooled_features of block5
    + pooling on those maps. Build the models in `policy` (see `precision`).

    Returns the rate of each (images per second) and the maps (for fine-tuning on them)."""
    import tempfile

    from kgg.job import maps as maps_lib
    from kgg.job import model as model_lib

    base = model_lib.build_base("vgg16", None, images.shape[1], include_top=False)
    base.trainable = False
    trunk, last_block = model_lib.build_frozen_trunk(base), model_lib.build_last_block(base)
    x, _ = _repeat_to(images, np.zeros(len(images), np.int64), steps * BATCH)
    dtype = maps_lib.maps_dtype(policy)
    with tempfile.TemporaryDirectory(prefix="bench-maps-") as folder:
        path = Path(folder, "maps.npy")
        maps_lib.write_frozen_maps(trunk, images[:BATCH], BATCH, path, 1, dtype, jit_compile)
        started, cpu = time.perf_counter(), time.process_time()
        maps_lib.write_frozen_maps(trunk, x, BATCH, path, 1, dtype, jit_compile)
        seconds = time.perf_counter() - started
        cpus = (time.process_time() - cpu) / seconds
        maps = maps_lib.read_cached_maps(path, len(x), dtype)
    if maps.shape[0] != len(x):
        raise ValueError(f"maps of {maps.shape[0]} images, expected {len(x)}")
    maps_steps = Steps(seconds / steps, steps, BATCH, cpus_used=cpus)
    # The job prints one progress line per predict when stdout is not a terminal: keep it out.
    with contextlib.redirect_stdout(io.StringIO()):
        maps_lib.pooled_features(last_block, maps[:BATCH], BATCH, jit_compile)
        started, cpu = time.perf_counter(), time.process_time()
        maps_lib.pooled_features(last_block, maps, BATCH, jit_compile)
        seconds = time.perf_counter() - started
        cpus = (time.process_time() - cpu) / seconds
    last_steps = Steps(seconds / steps, steps, BATCH, cpus_used=cpus)
    del base, trunk, last_block
    clear_session()
    return maps_steps, last_steps, maps


def head_epoch(
    n_train: int, n_val: int, n_features: int, n_classes: int, jit_compile: bool = False
) -> float:
    """Seconds of one head epoch on cached features (the job's build_head, Adam, class weights,
    validation on n_val), on full-size random features; the second epoch is timed."""
    import keras

    from kgg.job import fitting
    from kgg.job import model as model_lib

    rng = np.random.default_rng(0)
    f_train = rng.random((n_train, n_features), np.float32)
    f_val = rng.random((n_val, n_features), np.float32)
    y_train = rng.integers(0, n_classes, n_train)
    y_val = rng.integers(0, n_classes, n_val)
    weights = splits_lib.class_weights(y_train, n_classes)[y_train]
    head = model_lib.build_head(f_train, n_classes, 0.3)
    fitting.compile_model(head, keras.optimizers.Adam(1e-3), jit_compile)
    ends: list[float] = []
    clock = time.perf_counter
    head.fit(
        _dataset(f_train, y_train, n_classes, sample_weights=weights, shuffle=True),
        validation_data=_dataset(f_val, y_val, n_classes),
        epochs=3,
        verbose=0,
        callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=lambda *_: ends.append(clock()))],
    )
    del head
    clear_session()
    return (ends[-1] - ends[0]) / (len(ends) - 1)


def finetune_steps(
    maps: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    steps: int,
    views: int = 2,
    jit_compile: bool = False,
) -> Steps:
    """Phase 2 as the job runs it with one block unfrozen: block5 + head on cached block4 maps
    (build_last_block + build_maps_model), Adam 1e-5, class-weighted batches drawing one of
    `views` cached views per image (the rows of `maps` repeated to fill them)."""
    import keras

    from kgg.job import fitting
    from kgg.job import model as model_lib

    size = maps.shape[1] * 16  # block4_pool is the image downsampled 16x
    base = model_lib.build_base("vgg16", None, size, include_top=False)
    base.trainable = False
    last_block = model_lib.build_last_block(base)
    # The head standardises with the training features' statistics: any features will do here.
    features = np.random.default_rng(0).random((BATCH, last_block.output.shape[-1]), np.float32)
    head = model_lib.build_head(features, n_classes, 0.3)
    model_lib.unfreeze_last_blocks(base, 1)
    model = model_lib.build_maps_model(last_block, head)
    fitting.compile_model(model, keras.optimizers.Adam(1e-5), jit_compile)
    n = (steps + 1) * BATCH
    rows, _ = _repeat_to(maps, np.zeros(len(maps), np.int64), views * n)
    y = labels[np.arange(n) % len(labels)]
    weights = splits_lib.class_weights(y, n_classes)[y]
    ds = _dataset(rows, y, n_classes, sample_weights=weights, shuffle=True, views=views)
    result = fit_steps(model, ds, steps, BATCH)
    del model, base, last_block, head
    clear_session()
    return result


def finetune_steps_on_images(
    images: Rows,
    labels: np.ndarray,
    n_classes: int,
    steps: int,
    unfreeze_blocks: int,
    jit_compile: bool = False,
) -> Steps:
    """Phase 2 as the job runs it with more than one block unfrozen: extractor + head on
    augmented images, Adam 1e-5, class-weighted batches."""
    import keras

    from kgg.job import fitting
    from kgg.job import model as model_lib

    base = model_lib.build_base("vgg16", None, images.shape[1], include_top=False)
    base.trainable = False
    extractor = model_lib.build_feature_extractor(base)
    features = np.random.default_rng(0).random((BATCH, extractor.output.shape[-1]), np.float32)
    head = model_lib.build_head(features, n_classes, 0.3)
    model_lib.unfreeze_last_blocks(base, unfreeze_blocks)
    model = model_lib.build_finetune_model(extractor, head)
    fitting.compile_model(model, keras.optimizers.Adam(1e-5), jit_compile)
    x, y = _repeat_to(images, labels, (steps + 1) * BATCH)
    weights = splits_lib.class_weights(y, n_classes)[y]
    ds = _dataset(x, y, n_classes, sample_weights=weights, shuffle=True, augment=True)
    result = fit_steps(model, ds, steps, BATCH)
    del model, base, extractor, head
    clear_session()
    return result


# --- 4. the standard VGG16 against the machine's peak -------------------------------------------


def vgg16_forward(steps: int, size: int = IMAGE_SIZE, jit_compile: bool = False) -> Steps:
    """keras.applications.VGG16(weights=None), include_top, inference on batches of 32 through a
    compiled tf.function (no input pipeline): the raw speed of the model on this machine."""
    import keras
    import tensorflow as tf

    model = keras.applications.VGG16(weights=None, input_shape=(size, size, 3))
    x = tf.constant(np.random.default_rng(0).uniform(0, 255, (BATCH, size, size, 3)), tf.float32)
    forward = tf.function(model.__call__, jit_compile=jit_compile)
    forward(x, training=False).numpy()
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        forward(x, training=False).numpy()
    seconds = time.perf_counter() - started
    cpus = (time.process_time() - cpu) / seconds
    del model
    clear_session()
    return Steps(seconds / steps, steps, BATCH, cpus_used=cpus)


def vgg16_training(steps: int, size: int = IMAGE_SIZE, jit_compile: bool = False) -> Steps:
    """keras.applications.VGG16(weights=None) trained end to end (SGD, momentum) with model.fit on
    an in-memory batch repeated: forward + backward + update, no input pipeline cost."""
    import keras
    import tensorflow as tf

    model = keras.applications.VGG16(weights=None, input_shape=(size, size, 3))
    optimizer = keras.optimizers.SGD(1e-3, momentum=0.9)
    model.compile(optimizer, "categorical_crossentropy", jit_compile=jit_compile)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (BATCH, size, size, 3)).astype(np.float32)
    y = np.eye(1000, dtype=np.float32)[rng.integers(0, 1000, BATCH)]
    ds = tf.data.Dataset.from_tensors((x, y)).repeat()
    result = fit_steps(model, ds, steps, BATCH)
    del model
    clear_session()
    return result
