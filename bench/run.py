"""`uv run python bench/run.py [--quick] [--scale] [--gpu]`: the benchmark of issues 6, 14, 23.

Generates the synthetic data once (bench/.cache), measures the job's input pipeline, training
phases, end-to-end time and peak memory of each recipe, VGG16 against the machine's peak FLOP/s,
and the real job at 1x and 10x the data (bench/scale.py); prints a table and writes
bench/results/latest.{json,md} (a full CPU run also records itself in docs/BENCHMARKS.md).
`--scale` runs the input pipeline and the scale part alone (bench/results/scale.{json,md}).
`--gpu` measures the same on a GPU in float32 and mixed_float16.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bench import dataset, estimate, flops, hardware, measure, precisions
from bench import report as report_lib
from bench import scale as scale_lib
from bench.common import (
    CACHE,
    FULL,
    GIB,
    QUICK,
    RESULTS,
    ROOT,
    Plan,
    full_sizes,
    log,
    machine_description,
    split_sizes,
    write_docs,
    write_outputs,
)
from bench.precisions import Measured
from bench.report import Report, Target

if TYPE_CHECKING:
    from kgg.job.arrays import DiskRows
    from kgg.job.runtime import Precision

# --quick measures the fast recipe's memory only (the target); a child costs about a minute.
PROBED = {"full": ("fast", "guide"), "quick": ("fast",)}

# From the job's TrainConfig defaults (kgg/job/config.py); read at run time where possible.
SECTION_PIPE = "1. Input pipeline (job's images.load_images + pipeline.make_dataset)"
SECTION_E2E = precisions.SECTION_E2E
SECTION_FLOPS = precisions.SECTION_FLOPS


# --- peak RSS of the real job, one subprocess per recipe ----------------------------------------


def probe_recipe(
    recipe: str, data_root: Path, steps: int, image_size: int
) -> tuple[float | None, float, str]:
    """Runs the real `kgg train` on the full data with fits/predicts cut to `steps` steps, in
    a child process with a cold image cache; returns its peak RSS in bytes (ru_maxrss of that
    child, from wait4), its wall seconds, and the tail of its log."""
    cache = CACHE / f"probe-{recipe}"
    out = CACHE / f"probe-{recipe}-out"
    for path in (cache, out):
        shutil.rmtree(path, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    log_path = RESULTS / f"probe-{recipe}.log"
    args = [
        sys.executable, "-m", "bench.probe", str(steps), "--",
        "--data", str(data_root), "--out", str(out), "--recipe", recipe, "--weights", "none",
        "--cache-dir", str(cache), "--no-progress", "--image-size", str(image_size),
        "--guide-epochs", "1", "--head-epochs", "1", "--finetune-epochs", "1",
    ]  # fmt: skip
    started = time.perf_counter()
    with log_path.open("w") as log_file:
        child = subprocess.Popen(args, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    if child.returncode != 0:
        return None, seconds, tail
    # Linux reports ru_maxrss in KiB.
    return usage.ru_maxrss * 1024.0, seconds, tail


# --- the CPU run ---------------------------------------------------------------------------------


def data_root_for(plan: Plan) -> Path:
    return CACHE / f"plant-seedlings-{plan.train_images}"


@dataclass(frozen=True)
class Pipeline:
    """Section 1's figures the later parts use, and the decoded images they measure on."""

    decode_ips: float
    images: DiskRows  # the decoded training images: rows of the image cache on disk
    labels: np.ndarray
    source_bytes_per_file: float


def run_pipeline(plan: Plan, report: Report) -> Pipeline:
    """The synthetic full-size data (generated once) and section 1: the job's decode of every
    training image into its cache, the cache's reopening, cached epochs."""
    log(f"dataset: {plan.train_images} train + {plan.test_images} test images (once, cached)")
    started = time.perf_counter()
    summary = dataset.ensure(data_root_for(plan), plan.train_images, plan.test_images)
    report.notes.append(
        f"Synthetic data ({data_root_for(plan).relative_to(ROOT)}): {summary['train']} train "
        f"images in 12 classes {sorted(summary['classes'].values())}, {summary['test']} test, "
        f"sides {summary['side_px']['min']}..{summary['side_px']['max']} px (median "
        f"{summary['side_px']['median']}), {summary['rgba']} RGBA, {summary['megapixels']} Mpx, "
        f"{summary['bytes'] / 1e9:.2f} GB of PNG; {_generated(time.perf_counter() - started)}."
    )
    log("input pipeline: cold decode+resize of every training image, then cached epochs")
    from kgg.job import images as images_lib

    n_classes = 12
    pipe, images, labels = measure.input_pipeline(
        data_root_for(plan), CACHE / "pipeline", n_classes, plan.image_size
    )
    first_ips = pipe.images / pipe.first_epoch_s
    cached_ips = pipe.images / pipe.cached_epoch_s
    report.add(
        SECTION_PIPE,
        f"first epoch: decode+resize to {plan.image_size}",
        first_ips,
        "img/s",
        f"{pipe.images} PNGs, {pipe.first_epoch_s:.1f} s, {images_lib.decode_workers()} decode "
        "processes, straight into the .npy cache",
    )
    report.add(
        SECTION_PIPE,
        "reopening the decoded cache",
        pipe.cache_load_s,
        "s",
        f"open of {pipe.images} decoded uint8 images on disk ({images.nbytes / 1e6:.0f} MB; "
        "nothing read until gathered)",
    )
    report.add(
        SECTION_PIPE,
        "cached epoch",
        cached_ips,
        "img/s",
        f"make_dataset pass (shuffle, batch 32, cast), rows read from the cache on disk "
        f"(page cache), {pipe.cached_epoch_s:.2f} s",
    )
    report.add(
        SECTION_PIPE,
        "cached epoch with augmentation",
        pipe.images / pipe.augmented_epoch_s,
        "img/s",
        f"flips + rot90 as in fine-tuning, {pipe.augmented_epoch_s:.2f} s",
    )
    report.add(SECTION_PIPE, "cached / first epoch", cached_ips / first_ips, "x", "")
    report.targets.append(
        Target("cached epochs vs first epoch", cached_ips / first_ips, ">=", 10, "x")
    )
    files = summary["train"] + summary["test"]
    return Pipeline(first_ips, images, labels, summary["bytes"] / files)


def run_scale(plan: Plan, report: Report, pipeline: Pipeline | None) -> None:
    """Sections 6 and 7: the real job at 1x and 10x the data, and the fast recipe for 10x on
    the default T4 VM (decoding there at section 1's rate per decode process)."""
    from kgg.job.config import TrainConfig
    from kgg.job.images import decode_workers

    defaults = TrainConfig(data="", out="")
    runs = scale_lib.measure(plan.scale, CACHE, RESULTS, ROOT, log)
    scale_lib.add_rows(report, runs)
    top = runs[-1]
    counts = list(dataset.scaled_counts(top.train).values())
    sizes = split_sizes(np.repeat(np.arange(len(counts)), counts), top.test)
    scale_lib.add_projection(
        report, top, sizes,
        pipeline.decode_ips / decode_workers() if pipeline else None,
        pipeline.source_bytes_per_file if pipeline else None,
        plan.scale.image_size, (defaults.head_epochs, defaults.finetune_epochs),
    )  # fmt: skip
    report.notes.append(
        f"Scale runs (section 6) on small synthetic sources ({plan.scale.size_mix[0][1]}-"
        f"{plan.scale.size_mix[-1][2]} px PNGs) at {plan.scale.image_size} px: the caches, "
        "the maps and every array the job makes are full size; only decoding is faster than "
        "on photos. Peak RSS is the job's process; its decode processes (one per core, "
        "numpy and Pillow each) come on top."
    )


def run_cpu(plan: Plan, report: Report, peak: hardware.Peak, wanted: list[str]) -> None:
    """Every CPU figure; the training rows once per precision in `wanted` (--precision values)."""
    from kgg.job import maps as maps_lib
    from kgg.job.config import TrainConfig

    defaults = TrainConfig(data="", out="")
    pipeline = run_pipeline(plan, report)
    first_ips, images, labels = pipeline.decode_ips, pipeline.images, pipeline.labels
    rss: dict[str, float | None] = {"guide": None}
    for recipe in PROBED[plan.name]:
        log(f"peak memory: the real job, recipe {recipe}, {plan.probe_steps} step(s) per phase")
        peak_rss, seconds, tail = probe_recipe(
            recipe, data_root_for(plan), plan.probe_steps, plan.image_size
        )
        rss[recipe] = peak_rss
        how = (
            f"peak RSS of `kgg train --recipe {recipe}` in a child (wait4 "
            f"ru_maxrss), cold image cache, every fit/predict cut to {plan.probe_steps} step(s); "
            f"child ran {seconds:.0f} s"
        )
        if peak_rss is None:
            report.not_measured.append(f"peak RSS of the {recipe} recipe: the job failed:\n{tail}")
        report.add(SECTION_E2E, f"peak RSS, {recipe} recipe", _gib(peak_rss), "GiB", how)

    from kgg.job import runtime

    auto = runtime.local_precision()
    full = full_sizes()
    measured = precisions.measure_settings(
        precisions.settings(wanted, auto.policy), images, labels, plan,
        defaults.unfreeze_blocks, maps_lib.MAPS_VIEWS, full,
    )  # fmt: skip
    del images
    epochs = (defaults.guide_epochs, defaults.head_epochs, defaults.finetune_epochs)
    totals = precisions.add_rows(
        report, measured, first_ips, plan.image_size, defaults.unfreeze_blocks,
        maps_lib.MAPS_VIEWS, epochs, full,
    )  # fmt: skip
    by_policy = {m.setting.policy: m for m in measured}
    job = next(m for m in measured if m.setting.auto)
    job_totals = totals[job.setting.label]
    report.notes.append(
        f"The job's --precision auto on this machine: {auto.policy} ({auto.reason}); the peak "
        "RSS rows run the job at it."
    )
    on_maps = defaults.unfreeze_blocks == 1
    job_rates = precisions.rates(first_ips, job, maps_lib.MAPS_VIEWS, on_maps)
    report.targets.append(
        Target(
            f"fast recipe end to end vs guide, {job.setting.label}",
            job_totals.speedup,
            ">=",
            10,
            "x",
            _speedup_why(
                job_totals.fast,
                defaults.finetune_epochs,
                estimate.max_finetune_epochs(
                    full, job_rates, job_totals.guide["total"], defaults.head_epochs
                ),
                defaults.unfreeze_blocks,
            ),
        )
    )
    report.targets.append(_precision_target(auto, totals, by_policy))
    report.targets.append(Target("fast recipe peak RSS", _gib(rss["fast"]), "<=", 6, "GiB"))
    if "float32" in by_policy:
        _add_peak_rows(report, by_policy["float32"], peak, plan.image_size)
    no_gpu = "no GPU here: run `bench/run.py --gpu` on a GPU VM"
    report.targets += [
        Target("GPU utilisation in phase 2", None, ">=", 90, "%", no_gpu),
        Target("mixed precision vs float32 on a GPU", None, ">=", 2, "x", no_gpu),
    ]
    run_scale(plan, report, pipeline)


def _native(plan: Plan, report: Report) -> list[str]:
    """The plan's extra precisions that this machine computes natively; the others are named in
    a note (emulated bfloat16 is several times slower than float32: minutes per guide step)."""
    from kgg.job import runtime

    native = []
    for precision in plan.precisions:
        chosen = runtime.local_precision(precision)
        if chosen.emulated:
            report.notes.append(
                f"Not measured: {chosen.reason} (add --precisions {precision} to measure it)."
            )
        else:
            native.append(precision)
    return native


def _precision_target(
    auto: Precision, totals: dict[str, precisions.Totals], by_policy: dict[str, Measured]
) -> Target:
    """The fast recipe end to end at the job's auto precision against float32 (issue 14)."""
    name = f"fast recipe end to end, auto ({auto.policy}) vs float32"

    def fast(policy: str) -> float:
        return totals[by_policy[policy].setting.label].fast["total"]

    if "float32" not in by_policy:
        return Target(name, None, ">=", 1.7, "x", "float32 not measured (--precisions)")
    if auto.policy == "float32":
        others = [f"{p} {fast('float32') / fast(p):.2f}x" for p in by_policy if p != "float32"]
        why = f"auto is float32 here ({auto.reason}): nothing to compare"
        if others:
            why += "; measured anyway: " + ", ".join(others)
        return Target(name, None, ">=", 1.7, "x", why)
    return Target(name, fast("float32") / fast(auto.policy), ">=", 1.7, "x", "in this run")


def _add_peak_rows(report: Report, measured: Measured, peak: hardware.Peak, size: int) -> None:
    """float32 VGG16 against the machine's fp32 peak (section 4)."""
    top = flops.vgg16_layers(size, top=True)
    forward_rate = measured.forward.images_per_second * flops.forward_flops(top)
    training_rate = measured.training.images_per_second * flops.training_flops(top)
    report.add(
        SECTION_FLOPS,
        "forward achieved, float32",
        forward_rate / 1e9,
        "GFLOP/s",
        f"{100 * forward_rate / peak.flops:.0f}% of peak {peak.flops / 1e9:.0f} GFLOP/s",
    )
    report.add(
        SECTION_FLOPS,
        "training achieved, float32",
        training_rate / 1e9,
        "GFLOP/s",
        f"{100 * training_rate / peak.flops:.0f}% of peak",
    )
    report.add(SECTION_FLOPS, "machine peak fp32", peak.flops / 1e9, "GFLOP/s", peak.formula())
    report.targets.append(
        Target("VGG16 forward vs machine peak (float32)", 100 * forward_rate / peak.flops, ">=",
               50, "%")
    )  # fmt: skip
    report.notes.append(
        "GCP_FACTS records VGG16 forward ~10.5 img/s and training ~3.7 img/s on another 2-core "
        f"machine (TF 2.20); here {measured.forward.images_per_second:.1f} and "
        f"{measured.training.images_per_second:.1f} in float32 at {size} px."
    )
    if peak.clock_source.startswith("/proc/cpuinfo"):
        # The rate the forward reached needs at least this clock at the assumed FLOPs/cycle.
        implied_ghz = forward_rate / (peak.cores * peak.flops_per_cycle) / 1e9
        report.notes.append(
            f"The peak uses the {peak.clock_ghz:.3f} GHz this VM reports (no cpufreq, so a boost "
            f"clock is unknown); the float32 forward's {forward_rate / 1e9:.0f} GFLOP/s needs at "
            f"least {implied_ghz:.2f} GHz at {peak.flops_per_cycle} FLOPs/cycle. Where that "
            "exceeds the reported clock the cores boost, the true peak is higher and the "
            "percentages of peak are upper bounds."
        )


def _speedup_why(
    fast: dict[str, float],
    finetune_epochs: int,
    max_epochs: int,
    unfreeze_blocks: int,
) -> str:
    largest = max((k for k in fast if k != "total"), key=lambda k: fast[k])
    share = 100 * fast[largest] / fast["total"]
    why = f"{share:.0f}% of the fast time is {largest}"
    if largest == "finetune" and unfreeze_blocks > 1:
        why += (
            f"; every phase-2 step runs the whole frozen VGG16 forward again to train the last "
            f"{unfreeze_blocks} block(s) and the head"
        )
    elif largest == "finetune":
        why += "; phase 2 trains block5 and the head on cached block4 maps"
    elif largest == "features":
        why += (
            "; the frozen forward over every image, plus each extra cached view of the training "
            "images for fine-tuning"
        )
    why += (
        f"; at these rates 10x allows at most {max_epochs} fine-tuning epochs "
        f"(the recipe runs {finetune_epochs})"
    )
    return why


def _generated(seconds: float) -> str:
    return "reused from the cache" if seconds < 5 else f"generated in {seconds:.0f} s"


def _gib(value: float | None) -> float | None:
    return None if value is None else value / GIB


def _loads(loads: tuple[float, float, float]) -> str:
    return " / ".join(f"{load:.2f}" for load in loads)


def _precision_list(text: str) -> list[str]:
    from kgg.job.runtime import PRECISIONS

    values = [value.strip() for value in text.split(",") if value.strip()]
    unknown = [value for value in values if value not in PRECISIONS]
    if unknown or not values:
        raise argparse.ArgumentTypeError(
            f"{text!r}: use comma-separated values of {list(PRECISIONS)}"
        )
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data, one step per phase")
    parser.add_argument("--gpu", action="store_true", help="GPU figures (skipped without a GPU)")
    parser.add_argument(
        "--scale",
        action="store_true",
        help="only the input pipeline and the real job at 1x and 10x the data (issue 23)",
    )
    parser.add_argument(
        "--no-docs", dest="docs", action="store_false", help="do not rewrite docs/BENCHMARKS.md"
    )
    parser.add_argument(
        "--docs-from",
        type=Path,
        metavar="JSON",
        help="only record a saved run (bench/results/latest.json) in docs/BENCHMARKS.md",
    )
    parser.add_argument(
        "--precisions",
        type=_precision_list,
        help="comma-separated --precision values to measure side by side (default: float32 and "
        "auto; --quick adds bfloat16); auto, the job's default, is always measured",
    )
    args = parser.parse_args(argv)
    if args.docs_from:
        write_docs(report_lib.from_json(args.docs_from.read_text()))
        return 0
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    plan = QUICK if args.quick else FULL
    if args.gpu:
        from bench import gpu

        return gpu.main(plan, data_root_for(plan))
    cpu, peak = hardware.read_cpu()
    mode = "scale" if args.scale and not args.quick else plan.name
    report = Report(mode=mode, machine=machine_description(cpu, peak))
    started = time.perf_counter()
    load_before = os.getloadavg()
    if args.scale:
        run_scale(plan, report, run_pipeline(plan, report))
    else:
        wanted = ["float32", *(args.precisions or _native(plan, report)), "auto"]
        run_cpu(plan, report, peak, wanted)
    load_after = os.getloadavg()
    report.machine["load average (1, 5, 15 min)"] = (
        f"{_loads(load_before)} at start, {_loads(load_after)} at end"
    )
    report.notes.append(f"The benchmark itself ran {time.perf_counter() - started:.0f} s.")
    if max(load_before[0], load_after[0]) > cpu.logical_cpus + 0.5:
        report.notes.append(
            f"Other processes were running (load {load_before[0]:.1f}/{load_after[0]:.1f} on "
            f"{cpu.logical_cpus} CPUs): rates are lower than on an idle machine; the ratios "
            "between rows of one run still hold."
        )
    print(report_lib.format_text(report))
    stem = "scale" if args.scale else "latest"
    write_outputs(report, docs=args.docs and plan is FULL, stem=stem)
    log(f"wrote {RESULTS.relative_to(ROOT)}/{stem}.json and {stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
