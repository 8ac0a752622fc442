"""End-to-end time of each recipe on the full-size data, composed from measured rates.

Pure arithmetic, so every term is visible and tested: decode once (train + test), the training
phases at their measured rates, a validation pass per epoch, and the final evaluation (validation
+ test predictions). Early stopping (fast recipe, patience 3) can only make the fast run shorter;
the estimate uses the full default phase lengths.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sizes:
    train: int
    val: int
    test: int


@dataclass(frozen=True)
class Rates:
    """Measured rates: images/s, except head_epoch_s (seconds per head epoch).

    With `last_block_ips` (fine-tuning the last block on cached block4 maps, the default), the
    features phase computes `views` maps per training image and one per validation image at
    features_ips, then block5 + pooling over train and validation at last_block_ips; fine-tuning
    validates on the maps at that rate too. Without it, phase 2 runs on images (more blocks
    unfrozen): one pooled-feature pass at features_ips, validation at forward_ips."""

    decode_ips: float
    forward_ips: float
    guide_ips: float
    features_ips: float
    head_epoch_s: float
    finetune_ips: float
    last_block_ips: float | None = None
    views: int = 1


def decode_seconds(sizes: Sizes, rates: Rates) -> float:
    return (sizes.train + sizes.val + sizes.test) / rates.decode_ips


def evaluate_seconds(sizes: Sizes, rates: Rates) -> float:
    return (sizes.val + sizes.test) / rates.forward_ips


def guide_epoch_seconds(sizes: Sizes, rates: Rates) -> float:
    """One guide epoch: full training over train, one forward pass over validation."""
    return sizes.train / rates.guide_ips + sizes.val / rates.forward_ips


def finetune_epoch_seconds(sizes: Sizes, rates: Rates) -> float:
    validation_ips = rates.last_block_ips or rates.forward_ips
    return sizes.train / rates.finetune_ips + sizes.val / validation_ips


def features_seconds(sizes: Sizes, rates: Rates) -> float:
    if rates.last_block_ips is None:
        return (sizes.train + sizes.val) / rates.features_ips
    maps = (rates.views * sizes.train + sizes.val) / rates.features_ips
    return maps + (sizes.train + sizes.val) / rates.last_block_ips


def guide_seconds(sizes: Sizes, rates: Rates, epochs: int) -> dict[str, float]:
    parts = {
        "decode": decode_seconds(sizes, rates),
        "guide": epochs * guide_epoch_seconds(sizes, rates),
        "evaluate": evaluate_seconds(sizes, rates),
    }
    return {**parts, "total": sum(parts.values())}


def fast_seconds(
    sizes: Sizes, rates: Rates, head_epochs: int, finetune_epochs: int
) -> dict[str, float]:
    parts = {
        "decode": decode_seconds(sizes, rates),
        "features": features_seconds(sizes, rates),
        "head": head_epochs * rates.head_epoch_s,
        "finetune": finetune_epochs * finetune_epoch_seconds(sizes, rates),
        "evaluate": evaluate_seconds(sizes, rates),
    }
    return {**parts, "total": sum(parts.values())}


def max_finetune_epochs(
    sizes: Sizes, rates: Rates, guide_total: float, head_epochs: int, speedup: float = 10.0
) -> int:
    """The most fine-tuning epochs the fast recipe can run and still be `speedup` times faster
    than the guide recipe at these rates (0 when even none would do)."""
    without = fast_seconds(sizes, rates, head_epochs, 0)["total"]
    budget = guide_total / speedup - without
    return max(0, int(budget // finetune_epoch_seconds(sizes, rates)))
