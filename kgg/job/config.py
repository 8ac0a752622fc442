"""The resolved options of one training run: recipe defaults applied once, then read everywhere.

config.json in the results is `TrainConfig.to_dict()`, so a run can be reproduced from it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kgg.job.runtime import PRECISIONS

Recipe = Literal["fast", "guide"]
RECIPES: tuple[str, ...] = ("fast", "guide")
BASES: tuple[str, ...] = ("vgg16", "vgg19")

# The 2018 guide: 224x224, batch 32, 20 epochs, SGD 1e-3 (see docs and GCP_FACTS "The workload").
# It reports its last epoch on validation and selects nothing on it: no held-out split by default.
GUIDE_DEFAULTS: dict[str, Any] = {
    "image_size": 224, "batch_size": 32, "guide_epochs": 20, "holdout": 0.0,
}  # fmt: skip
# The fast recipe's defaults: the size VGG was trained at and a batch that fits a T4 with room.
# Validation picks its best epoch and stops it early, so its headline score is a held-out split.
FAST_DEFAULTS: dict[str, Any] = {"image_size": 224, "batch_size": 32, "holdout": 0.1}
# Options that say where and how fast a run works, not what it trains: outside the fingerprint.
# `data` is there too: the data's identity is its content (folders.DataIdentity), not its path.
# `precision` too: "auto" means another policy on other hardware, and a run resumed on another
# machine type must go on; its scores agree within tests/job/test_precision.py's tolerance.
NOT_FINGERPRINTED = frozenset({"data", "out", "cache_dir", "workers", "progress", "precision"})
# The smallest value of each count (0 fine-tuning epochs: the head alone).
MINIMUMS = {"batch_size": 1, "workers": 1, "head_epochs": 1, "finetune_epochs": 0,
            "guide_epochs": 1, "patience": 1, "seed": 0}  # fmt: skip

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
    # Held out from training and from every choice (best epoch, early stopping); scored once.
    holdout: float = 0.1
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
    # auto: bfloat16 or float16 where the hardware computes them natively (kgg.job.runtime).
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe {self.recipe!r} is unknown; use one of {list(RECIPES)}")
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"--precision {self.precision!r} is unknown; use one of {list(PRECISIONS)}"
            )
        if self.base not in BASES:
            raise ValueError(f"base {self.base!r} is unknown; use one of {list(BASES)}")
        if self.image_size < 32:
            raise ValueError(f"--image-size {self.image_size} is too small; VGG needs at least 32")
        for name, low in MINIMUMS.items():
            if getattr(self, name) < low:
                raise ValueError(f"{_flag(name)} {getattr(self, name)} must be at least {low}")
        if not 1 <= self.unfreeze_blocks <= 5:
            raise ValueError(
                f"--unfreeze-blocks {self.unfreeze_blocks} must be 1..5 (VGG's conv blocks)"
            )
        for name in ("head_lr", "finetune_lr", "guide_lr"):
            rate = getattr(self, name)
            if not (math.isfinite(rate) and 0.0 < rate <= 1.0):
                raise ValueError(f"{_flag(name)} {rate} must be a learning rate in (0, 1]")
        if not 0.0 < self.val_split < 1.0:
            raise ValueError(f"--val-split {self.val_split} must be between 0 and 1 (exclusive)")
        if not 0.0 <= self.holdout < 1.0:
            raise ValueError(f"--holdout {self.holdout} must be in [0, 1); 0 holds nothing out")
        if self.val_split + self.holdout >= 1.0:
            raise ValueError(
                f"--val-split {self.val_split} plus --holdout {self.holdout} leave no image to "
                "train on; lower them"
            )
        if not 0.0 <= self.head_dropout < 1.0:
            raise ValueError(f"head_dropout {self.head_dropout} must be in [0, 1)")

    @property
    def augment(self) -> bool:
        """The guide trained without augmentation; the fast recipe augments while fine-tuning:
        left-right flips from cached block4 maps with one block unfrozen, flips and 90-degree
        rotations of the images with more (see recipes.fast)."""
        return self.recipe == "fast"

    def phases(self) -> list[tuple[str, int]]:
        """(phase, epochs) in order; `features` is a one-pass phase."""
        if self.recipe == "guide":
            return [("guide", self.guide_epochs)]
        return [("features", 1), ("head", self.head_epochs), ("finetune", self.finetune_epochs)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Identifies the options the trained result depends on (not where data and results are,
        nor how fast it runs); the data's content has its own fingerprint
        (folders.data_identity)."""
        relevant = {k: v for k, v in self.to_dict().items() if k not in NOT_FINGERPRINTED}
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def _flag(name: str) -> str:
    """The command-line spelling of an option: head_epochs -> --head-epochs."""
    return "--" + name.replace("_", "-")


def resolve(recipe: str = "fast", **options: Any) -> TrainConfig:
    """Builds a TrainConfig: options given as None take the recipe's default."""
    defaults = GUIDE_DEFAULTS if recipe == "guide" else FAST_DEFAULTS
    given = {k: v for k, v in options.items() if v is not None}
    return TrainConfig(recipe=recipe, **{**defaults, **given})  # type: ignore[arg-type]
