"""The resolved options of one training run: recipe defaults applied once, then read everywhere.

config.json in the results is `TrainConfig.to_dict()`, so a run can be reproduced from it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Recipe = Literal["fast", "guide"]
RECIPES: tuple[str, ...] = ("fast", "guide")
BASES: tuple[str, ...] = ("vgg16", "vgg19")

# The 2018 guide: 224x224, batch 32, 20 epochs, SGD 1e-3 (see docs and GCP_FACTS "The workload").
GUIDE_DEFAULTS: dict[str, Any] = {"image_size": 224, "batch_size": 32, "guide_epochs": 20}
# The fast recipe's defaults: the size VGG was trained at and a batch that fits a T4 with room.
FAST_DEFAULTS: dict[str, Any] = {"image_size": 224, "batch_size": 32}

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "keras-gpu-gcp"


@dataclass(frozen=True)
class TrainConfig:
    """Every option of a run, with recipe-dependent defaults already filled in."""

    data: str
    out: str
    recipe: Recipe = "fast"
    base: str = "vgg16"
    weights: str = "imagenet"
    image_size: int = 224
    batch_size: int = 32
    val_split: float = 0.2
    seed: int = 42
    # fast recipe: head on cached features, then fine-tuning of the last conv block(s).
    head_epochs: int = 12
    head_lr: float = 1e-3
    head_dropout: float = 0.3
    finetune_epochs: int = 10
    finetune_lr: float = 1e-5
    unfreeze_blocks: int = 1
    patience: int = 3
    # guide recipe: the 2018 SGD schedule.
    guide_epochs: int = 20
    guide_lr: float = 1e-3
    guide_momentum: float = 0.9
    guide_decay: float = 1e-6
    cache_dir: str = str(DEFAULT_CACHE_DIR)
    workers: int = 8
    progress: bool = True

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe {self.recipe!r} is unknown; use one of {list(RECIPES)}")
        if self.base not in BASES:
            raise ValueError(f"base {self.base!r} is unknown; use one of {list(BASES)}")
        if self.image_size < 32:
            raise ValueError(f"image_size {self.image_size} is too small; VGG needs at least 32")
        if not 0.0 < self.val_split < 1.0:
            raise ValueError(f"val_split {self.val_split} must be between 0 and 1 (exclusive)")
        if self.batch_size < 1:
            raise ValueError(f"batch_size {self.batch_size} must be at least 1")
        if not 1 <= self.unfreeze_blocks <= 5:
            raise ValueError(f"unfreeze_blocks {self.unfreeze_blocks} must be 1..5 (VGG blocks)")

    @property
    def augment(self) -> bool:
        """The guide trained without augmentation; the fast recipe augments while fine-tuning:
        left-right flips from cached block4 maps with one block unfrozen, flips and 90-degree
        rotations of the images with more (see train._train_fast)."""
        return self.recipe == "fast"

    def phases(self) -> list[tuple[str, int]]:
        """(phase, epochs) in order; `features` is a one-pass phase."""
        if self.recipe == "guide":
            return [("guide", self.guide_epochs)]
        return [("features", 1), ("head", self.head_epochs), ("finetune", self.finetune_epochs)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Identifies what the trained result depends on (not where it is written or cached)."""
        relevant = {
            k: v
            for k, v in self.to_dict().items()
            if k not in {"out", "cache_dir", "workers", "progress"}
        }
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def resolve(recipe: str = "fast", **options: Any) -> TrainConfig:
    """Builds a TrainConfig: options given as None take the recipe's default."""
    defaults = GUIDE_DEFAULTS if recipe == "guide" else FAST_DEFAULTS
    given = {k: v for k, v in options.items() if v is not None}
    return TrainConfig(recipe=recipe, **{**defaults, **given})  # type: ignore[arg-type]
