"""The tf.data pipelines that feed Keras: rows gathered by index from arrays or rows on disk,
each training epoch's order, views and augmentation drawn from (seed, epoch) alone.

TensorFlow is imported only inside the dataset builders, so epoch_rows and augment_batch are
usable (and tested) without it.
"""

from __future__ import annotations

import functools
import weakref
from typing import Any

import numpy as np

from kgg.job.arrays import Rows


@functools.lru_cache(maxsize=4)
def epoch_rows(n: int, views: int, seed: tuple[int, ...], epoch: int) -> np.ndarray:
    """The rows of one training epoch: every sample once, in an order and from a view drawn from
    (seed, epoch) alone, so a resumed run draws exactly what an uninterrupted one would have.

    With `views` > 1, row v * n + i is view v of sample i (see training_dataset)."""
    rng = np.random.default_rng([*seed, epoch])
    order = rng.permutation(n)
    return order + n * rng.integers(0, views, n) if views > 1 else order


def augment_batch(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random left-right and up-down flips per image, one random quarter turn per batch (square
    images): seedlings photographed from above have no up."""
    out = images.copy()
    for axis in (2, 1):  # width, height
        flipped = rng.random(len(out)) < 0.5
        out[flipped] = np.flip(out[flipped], axis=axis)
    return np.ascontiguousarray(np.rot90(out, int(rng.integers(4)), axes=(1, 2)))


def make_dataset(
    images: Rows,
    labels: np.ndarray,
    n_classes: int,
    batch_size: int,
    sample_weights: np.ndarray | None = None,
) -> Any:
    """(float32 images in [0, 255], one-hot labels[, sample weights]) batches in row order, once:
    for evaluation and the features pass."""
    return _pipeline(images, labels, n_classes, batch_size, sample_weights, None, range(1))


def prediction_batches(images: Rows, batch_size: int) -> Any:
    """float32 batches of `images` in row order for Model.predict, each exactly `batch_size`
    rows: the last is padded with copies of its final row (model_lib.predict drops their
    predictions). One batch shape, one trace of a model's predict function (and one XLA
    compilation): a shorter last batch, or labels of another shape, would trace it again."""
    labels = np.zeros(len(images), np.int64)
    dataset = _pipeline(images, labels, 1, batch_size, None, None, range(1), pad=True)
    return dataset.map(lambda x, y: x)


def training_dataset(
    images: Rows,
    labels: np.ndarray,
    n_classes: int,
    batch_size: int,
    sample_weights: np.ndarray | None,
    seed: tuple[int, ...],
    epochs: range,
    views: int = 1,
    augment: bool = False,
) -> tuple[Any, int]:
    """The training batches of `epochs` (e.g. range(resumed_at, 10)) and the steps per epoch,
    for fit(steps_per_epoch=...): one dataset across epochs, each epoch's order, views and
    augmentation drawn from (seed, epoch) alone (epoch_rows), never from a generator's history.

    `views` > 1: `images` holds `views` blocks of len(labels) rows (precomputed augmented views of
    the same samples, such as cached feature maps of flipped images), and each epoch takes every
    sample from one view drawn at random. `augment` flips and turns image batches (augment_batch).
    """
    dataset = _pipeline(
        images, labels, n_classes, batch_size, sample_weights, seed, epochs, views, augment
    )
    return dataset, -(-len(labels) // batch_size)


def _pipeline(
    images: Rows,
    labels: np.ndarray,
    n_classes: int,
    batch_size: int,
    sample_weights: np.ndarray | None,
    seed: tuple[int, ...] | None,
    epochs: range,
    views: int = 1,
    augment: bool = False,
    pad: bool = False,
) -> Any:
    """A tf.data pipeline over (epoch, step) pairs that gathers each batch's rows from `images`.

    Rows are gathered by index, batch by batch: the array is never copied into the pipeline
    (from_tensor_slices would copy it, and a shuffle buffer would hold another copy). `pad`
    fills the last batch up to `batch_size` rows with copies of its final row."""
    import tensorflow as tf

    n = len(labels)
    if len(images) != views * n:
        raise ValueError(f"{len(images)} rows for {views} view(s) of {n} samples")
    weights = None if sample_weights is None else sample_weights.astype(np.float32)
    source = _Source(images, np.eye(n_classes, dtype=np.float32)[labels], weights)
    steps = -(-n // batch_size)

    def gather(epoch: np.int64, step: np.int64) -> tuple[np.ndarray, ...]:
        rows_of, one_hot, weights = source.arrays()
        order = np.arange(n) if seed is None else epoch_rows(n, views, seed, int(epoch))
        rows = order[step * batch_size : (step + 1) * batch_size]
        if pad:
            rows = np.concatenate([rows, np.full(batch_size - len(rows), rows[-1])])
        x = rows_of[rows]
        if augment and seed is not None:
            x = augment_batch(x, np.random.default_rng([*seed, int(epoch), int(step)]))
        samples = rows % n
        parts = (x, one_hot[samples])
        return parts if weights is None else (*parts, weights[samples])

    dtype = tf.as_dtype(images.dtype)
    out_types = (dtype, tf.float32) if weights is None else (dtype, tf.float32, tf.float32)

    def prepare(epoch: Any, step: Any) -> tuple[Any, ...]:
        x, *rest = tf.numpy_function(gather, [epoch, step], out_types, stateful=False)
        x = tf.cast(x, tf.float32)
        rows = batch_size if pad else None
        x.set_shape((rows, *images.shape[1:]))
        rest[0].set_shape((rows, n_classes))
        if weights is not None:
            rest[1].set_shape((rows,))
        return (x, *rest)

    plan = (np.repeat(np.asarray(epochs, np.int64), steps), np.tile(np.arange(steps), len(epochs)))
    ds = tf.data.Dataset.from_tensor_slices(plan)
    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    weakref.finalize(ds, source.release)
    return ds


class _Source:
    """What a pipeline's gather reads, until its dataset is gone.

    TensorFlow keeps the Python function of every tf.numpy_function alive as long as the
    outermost graph, which for a tf.data pipeline built eagerly is the process's own: a gather
    that held its arrays itself would keep them to the end, 38 MB for each chunk of images
    predicted (measured: 1.3 GB for the block4 maps of 2,310 images). It holds this instead,
    which the dataset's finalizer empties."""

    def __init__(self, images: Rows, one_hot: np.ndarray, weights: np.ndarray | None) -> None:
        self._arrays: tuple[Rows, np.ndarray, np.ndarray | None] | None = (images, one_hot, weights)

    def arrays(self) -> tuple[Rows, np.ndarray, np.ndarray | None]:
        if self._arrays is None:
            raise RuntimeError("a batch was asked of a pipeline whose dataset is gone")
        return self._arrays

    def release(self) -> None:
        self._arrays = None
