"""The split of the training images into train, validation and held-out parts, stratified by
class, and the class weights: pure numpy, reproducible from the seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Below this many images a class gets one validation or held-out image, or none: its scores mean
# little, and the user should know before reading them.
FEW_IMAGES = 5
# Second seed component of the held-out split: a stream apart from the validation split's.
HOLDOUT_STREAM = 1


def few_image_warnings(labels: np.ndarray, class_names: list[str]) -> list[str]:
    """One line per class with fewer than FEW_IMAGES readable images."""
    counts = np.bincount(labels, minlength=len(class_names))
    return [
        f"class {name!r} has {count} image(s), fewer than {FEW_IMAGES}: its validation and "
        "held-out scores rest on one image or none; add images to score it"
        for name, count in zip(class_names, counts, strict=True)
        if count < FEW_IMAGES
    ]


def stratified_split(
    labels: np.ndarray, val_fraction: float, seed: int | Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation indices with each class split in the same proportion, reproducibly.

    Every class with at least two images keeps at least one in each part."""
    rng = np.random.default_rng(seed)
    train: list[np.ndarray] = []
    val: list[np.ndarray] = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_val = round(len(members) * val_fraction)
        if len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        val.append(members[:n_val])
        train.append(members[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def three_way_split(
    labels: np.ndarray, val_fraction: float, holdout_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train, validation and held-out indices, each stratified by class.

    The held-out part is drawn first, from its own random stream; validation then takes
    `val_fraction` of all images from the rest. With no held-out part, the validation split is
    the same as stratified_split's."""
    everything = np.arange(len(labels))
    if holdout_fraction > 0:
        rest, holdout = stratified_split(labels, holdout_fraction, (seed, HOLDOUT_STREAM))
    else:
        rest, holdout = everything, everything[:0]
    train, val = stratified_split(labels[rest], val_fraction / (1 - holdout_fraction), seed)
    return rest[train], rest[val], holdout


def class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """'Balanced' weights n / (k * count): each class contributes equally to the loss.

    The real data has 221 to 654 images per class; unweighted, the big classes dominate."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = np.zeros(n_classes)
    present = counts > 0
    weights[present] = len(labels) / (present.sum() * counts[present])
    return weights
