"""What a recipe trains on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Inputs:
    """The training and validation images (rows of the image cache on disk, never copies), their
    labels, and the class weights of the training labels."""

    x_train: Any
    y_train: np.ndarray
    x_val: Any
    y_val: np.ndarray
    class_weights: np.ndarray
    n_classes: int
