"""Every throughput row of the benchmark at each precision (Keras dtype policy) and XLA setting,
measured one after the other in one run, and the end-to-end time each implies: the rows sit
side by side, so their ratios hold even where absolute rates drift between runs.

Shared by the CPU run (bench/run.py) and the GPU run (bench/gpu.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench import estimate, flops, hardware, measure
from bench import report as report_lib
from bench.common import Plan, log
from bench.report import Report
from kgg.job.arrays import DiskRows

N_CLASSES = 12
FEATURES = 512  # VGG's pooled features: the head's input
SECTION_TRAIN = "2. Training throughput, batch 32 (job's models)"
SECTION_E2E = "3. End to end on the full-size data, and peak memory"
SECTION_FLOPS = "4. VGG16 (keras.applications, weights=None) against the machine's peak"


@dataclass(frozen=True)
class Setting:
    """One way to run the job: a Keras dtype policy, XLA or not, and whether it is what the
    job's --precision auto (and runtime's XLA choice) picks on this machine."""

    policy: str
    jit_compile: bool = False
    auto: bool = False

    @property
    def label(self) -> str:
        text = self.policy + (" + XLA" if self.jit_compile else "")
        return text + (" (auto)" if self.auto else "")


def settings(precisions: list[str], auto_policy: str, jit_compile: bool = False) -> list[Setting]:
    """A Setting per --precision value (auto resolved to `auto_policy`), float32 first, each
    policy once."""
    from kgg.job.runtime import POLICIES

    policies = [auto_policy if p == "auto" else POLICIES[p] for p in precisions]
    ordered = sorted(set(policies), key=lambda p: (p != "float32", policies.index(p)))
    return [Setting(p, jit_compile, auto=p == auto_policy) for p in ordered]


@dataclass(frozen=True)
class Measured:
    """The rates of one Setting: the job's phases (section 2) and the standard VGG16 (4)."""

    setting: Setting
    features: measure.Steps
    last_block: measure.Steps
    head_epoch_s: float
    finetune: measure.Steps
    guide: measure.Steps
    forward: measure.Steps
    training: measure.Steps
    # Mean nvidia-smi utilisation over phase 2's timed steps (GPU runs only).
    utilisation: float | None = None


def measure_settings(
    settings: list[Setting],
    images: DiskRows,
    labels: np.ndarray,
    plan: Plan,
    unfreeze_blocks: int,
    views: int,
    sizes: estimate.Sizes,
    sample_gpu: bool = False,
) -> list[Measured]:
    """Every rate of every Setting, each model built in its policy as the job builds it.

    Row by row, each row for every Setting in turn: on a shared machine whose load drifts, the
    Settings' figures of one row are measured minutes apart at most, not a whole pass apart."""
    size = images.shape[1]
    rows: dict[Setting, dict[str, Any]] = {setting: {} for setting in settings}

    def each(what: str, measure_one: Callable[[Setting], dict[str, Any]]) -> None:
        for setting in settings:
            log(f"{setting.label}: {what}")
            with measure.precision(setting.policy):
                rows[setting].update(measure_one(setting))
            measure.clear_session()

    def phase_1(setting: Setting) -> dict[str, Any]:
        features, last_block, maps = measure.feature_steps(
            images, plan.feature_steps, setting.policy, setting.jit_compile
        )
        return {"features": features, "last_block": last_block, "maps": maps}

    def phase_2(setting: Setting) -> dict[str, Any]:
        sampler = hardware.UtilizationSampler() if sample_gpu else None
        with sampler or contextlib.nullcontext():
            if unfreeze_blocks == 1:
                maps = rows[setting].pop("maps")
                finetune = measure.finetune_steps(
                    maps, labels, N_CLASSES, plan.finetune_steps, views, setting.jit_compile
                )
            else:
                finetune = measure.finetune_steps_on_images(
                    images, labels, N_CLASSES, plan.finetune_steps, unfreeze_blocks,
                    setting.jit_compile,
                )  # fmt: skip
        busy = (
            hardware.utilization_in(sampler.samples, *finetune.window)
            if sampler is not None and finetune.window is not None
            else []
        )
        return {"finetune": finetune, "utilisation": sum(busy) / len(busy) if busy else None}

    each(f"phase 1, {plan.feature_steps} batches", phase_1)
    each("head epoch on cached features (full size)", lambda s: {
        "head_epoch_s": measure.head_epoch(
            sizes.train, sizes.val, FEATURES, N_CLASSES, s.jit_compile
        )})  # fmt: skip
    each(f"phase 2, {plan.finetune_steps} steps", phase_2)
    each(f"guide recipe, {plan.guide_steps} steps", lambda s: {
        "guide": measure.guide_steps(images, labels, N_CLASSES, plan.guide_steps, s.jit_compile)
    })  # fmt: skip
    each(f"VGG16 forward, {plan.forward_steps} batches", lambda s: {
        "forward": measure.vgg16_forward(plan.forward_steps, size, s.jit_compile)
    })  # fmt: skip
    each(f"VGG16 training, {plan.training_steps} steps", lambda s: {
        "training": measure.vgg16_training(plan.training_steps, size, s.jit_compile)
    })  # fmt: skip
    for values in rows.values():
        values.pop("maps", None)
    return [Measured(setting, **values) for setting, values in rows.items()]


def rates(decode_ips: float, measured: Measured, views: int, on_maps: bool) -> estimate.Rates:
    """The rates the end-to-end estimate composes. Validation and evaluation passes of the image
    model run the whole frozen-base forward: blocks 1-4 at the maps' rate, then block5 +
    pooling at its own."""
    features, last_block = measured.features, measured.last_block
    forward_ips = 1 / (1 / features.images_per_second + 1 / last_block.images_per_second)
    return estimate.Rates(
        decode_ips=decode_ips,
        forward_ips=forward_ips,
        guide_ips=measured.guide.images_per_second,
        features_ips=features.images_per_second if on_maps else forward_ips,
        head_epoch_s=measured.head_epoch_s,
        finetune_ips=measured.finetune.images_per_second,
        last_block_ips=last_block.images_per_second if on_maps else None,
        views=views if on_maps else 1,
    )


@dataclass(frozen=True)
class Totals:
    """The extrapolated end-to-end seconds of both recipes at one Setting, by part."""

    guide: dict[str, float]
    fast: dict[str, float]

    @property
    def speedup(self) -> float:
        return self.guide["total"] / self.fast["total"]


def _how(steps: measure.Steps, what: str, flop_per_image: int) -> str:
    busy = f", {steps.cpus_used:.2f} CPUs busy" if steps.cpus_used is not None else ""
    return (
        f"{what}; {steps.steps} timed step(s) of 32 after 1 warm-up, "
        f"{steps.seconds_per_step:.3g} s/step, "
        f"{steps.images_per_second * flop_per_image / 1e9:.0f} GFLOP/s{busy}"
    )


def parts(totals: dict[str, float]) -> str:
    return ", ".join(
        f"{k} {report_lib.format_duration(v)}" for k, v in totals.items() if k != "total"
    )


def add_rows(
    report: Report,
    measured: list[Measured],
    decode_ips: float,
    image_size: int,
    unfreeze_blocks: int,
    views: int,
    epochs: tuple[int, int, int],
    sizes: estimate.Sizes,
) -> dict[str, Totals]:
    """Sections 2-4 with each figure's row for every Setting next to each other; returns the
    end-to-end totals per Setting label. `epochs`: guide, head and fine-tuning epochs."""
    guide_epochs, head_epochs, finetune_epochs = epochs
    on_maps = unfreeze_blocks == 1
    vgg = flops.vgg16_layers(image_size)
    block5 = [layer for layer in vgg if layer.name in flops.block_layers(vgg, {5})]
    unfrozen = flops.block_layers(vgg, set(range(6 - unfreeze_blocks, 6)))
    trunk_flops = flops.forward_flops([layer for layer in vgg if layer not in block5])
    finetune_flops = (
        flops.training_flops(block5) if on_maps else flops.training_flops(vgg, unfrozen)
    )
    guide_flops = flops.training_flops(flops.vgg16_layers(image_size, top=True, classes=N_CLASSES))
    finetune_name = f"phase 2: fine-tuning (last {unfreeze_blocks} block" + (
        ", on cached maps)" if on_maps else ")"
    )
    finetune_what = (
        f"build_maps_model on cached block4 maps, {views} views"
        if on_maps
        else "build_finetune_model, augmented batches"
    )
    totals = {
        m.setting.label: Totals(
            estimate.guide_seconds(sizes, rates(decode_ips, m, views, on_maps), guide_epochs),
            estimate.fast_seconds(
                sizes, rates(decode_ips, m, views, on_maps), head_epochs, finetune_epochs
            ),
        )
        for m in measured
    }
    rows = [
        (SECTION_TRAIN, "guide recipe (all layers, SGD)", "img/s",
         lambda m: (m.guide.images_per_second,
                    _how(m.guide, "build_guide_model + model.fit", guide_flops))),
        (SECTION_TRAIN, "phase 1: block4 maps (frozen blocks 1-4)", "img/s",
         lambda m: (m.features.images_per_second,
                    _how(m.features, "train.write_frozen_maps (chunked model.predict, 16-bit .npy)",
                         trunk_flops))),
        (SECTION_TRAIN, "phase 1: block5 + pooling on the maps", "img/s",
         lambda m: (m.last_block.images_per_second,
                    _how(m.last_block, "train.pooled_features of build_last_block",
                         flops.forward_flops(block5)))),
        (SECTION_TRAIN, "phase 1: head epoch on cached features", "s",
         lambda m: (m.head_epoch_s,
                    f"build_head + Adam, {sizes.train} train / {sizes.val} val rows, epoch 2-3 "
                    "mean")),
        (SECTION_TRAIN, finetune_name, "img/s",
         lambda m: (m.finetune.images_per_second,
                    _how(m.finetune, finetune_what, finetune_flops))),
        (SECTION_TRAIN, f"guide epoch ({sizes.train} train + {sizes.val} val)", "s",
         lambda m: (estimate.guide_epoch_seconds(sizes, rates(decode_ips, m, views, on_maps)),
                    "extrapolated; the 2018 guide: ~6000 s/epoch on CPU, ~130 s on a K80")),
        (SECTION_E2E, f"guide recipe, {guide_epochs} epochs", "s",
         lambda m: (totals[m.setting.label].guide["total"],
                    "extrapolated: " + parts(totals[m.setting.label].guide))),
        (SECTION_E2E, f"fast recipe, {head_epochs} head + {finetune_epochs} fine-tune epochs",
         "s",
         lambda m: (totals[m.setting.label].fast["total"],
                    "extrapolated (no early stop): " + parts(totals[m.setting.label].fast))),
        (SECTION_E2E, "fast vs guide", "x",
         lambda m: (totals[m.setting.label].speedup, "guide time / fast time")),
    ]  # fmt: skip
    top = flops.vgg16_layers(image_size, top=True)
    rows += [
        (SECTION_FLOPS, "forward", "img/s",
         lambda m: (m.forward.images_per_second,
                    _how(m.forward, "tf.function call, no input pipeline",
                         flops.forward_flops(top)))),
        (SECTION_FLOPS, "training step", "img/s",
         lambda m: (m.training.images_per_second,
                    _how(m.training, "model.fit, SGD, in-memory batch",
                         flops.training_flops(top)))),
    ]  # fmt: skip
    for section, name, unit, figure in rows:
        for m in measured:
            value, how = figure(m)
            report.add(section, f"{name}, {m.setting.label}", value, unit, how)
    if len(measured) > 1:
        base = measured[0]
        for m in measured[1:]:
            report.add(
                SECTION_E2E,
                f"fast recipe end to end, {m.setting.label} vs {base.setting.label}",
                totals[base.setting.label].fast["total"] / totals[m.setting.label].fast["total"],
                "x",
                "ratio of the two extrapolations above (same run, same method)",
            )
    return totals
