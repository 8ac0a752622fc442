"""`bench/run.py --gpu`: the training figures on a GPU in float32 and mixed_float16, GPU
utilisation while fine-tuning, and images per dollar at the catalogue's prices.

Without a GPU it prints "skipped: no GPU" and returns 0, so it is safe to run anywhere.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from bench import dataset, estimate, hardware
from bench import report as report_lib
from bench.report import Report, Target

if TYPE_CHECKING:
    from bench.run import Plan

PRECISIONS = ("float32", "mixed_float16")


def prices(gpu_name: str) -> tuple[str | None, float | None, float | None]:
    """(machine type, on-demand $/h, spot $/h) of a 1-GPU VM of this GPU, from infra's catalogue;
    None where the catalogue has no price (it never guesses one)."""
    from infra import catalogue

    key = hardware.gpu_catalogue_key(gpu_name)
    if key is None or key not in catalogue.GPUS:
        return None, None, None
    spec = catalogue.GPUS[key]
    machine = spec.default_machine_type
    return (
        machine,
        catalogue.hourly_cost_usd(spec, machine, 1, spot=False),
        catalogue.hourly_cost_usd(spec, machine, 1, spot=True),
    )


def main(plan: Plan, data_root: Path) -> int:
    gpus = hardware.list_gpus()
    if not gpus:
        print("skipped: no GPU (nvidia-smi is missing or lists no GPU); nothing measured")
        return 0
    import keras
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        print(f"skipped: no GPU visible to TensorFlow (nvidia-smi lists {gpus[0].name})")
        return 0

    from bench import measure, run
    from workload import train as train_lib

    steps = run.GPU_STEPS
    gpu = gpus[0]
    cpu, peak = hardware.read_cpu()
    report = Report(mode=f"gpu ({plan.name} data)", machine=run.machine_description(cpu, peak))
    report.machine["gpu"] = (
        f"{len(gpus)} x {gpu.name}, compute capability {gpu.compute_capability}, "
        f"{gpu.memory_mib} MiB, driver {gpu.driver}"
    )
    summary = dataset.ensure(data_root, plan.train_images, plan.test_images)
    report.notes.append(f"Synthetic data: {summary['train']} train, {summary['test']} test images.")
    report.not_measured.append(
        "peak RSS on the GPU VM (the CPU run measures it; host memory does not depend on the GPU)"
    )
    pipe, images, labels = measure.input_pipeline(data_root, run.CACHE / "pipeline", 12)
    first_ips = pipe.images / pipe.first_epoch_s
    section_pipe = "1. Input pipeline (CPU side of the GPU VM)"
    report.add(section_pipe, "first epoch: decode+resize to 224", first_ips, "img/s")
    report.add(section_pipe, "cached epoch", pipe.images / pipe.cached_epoch_s, "img/s")

    full = run.full_sizes()
    machine, on_demand, spot = prices(gpu.name)
    results: dict[str, dict[str, float]] = {}
    for precision in PRECISIONS:
        keras.mixed_precision.set_global_policy(precision)
        section = f"2. Training on {gpu.name}, {precision}, batch 32, {steps} timed steps"
        features, last_block, maps = measure.feature_steps(images, steps)
        measure._clear()
        head_s = measure.head_epoch(full.train, full.val, 512, 12)
        with hardware.UtilizationSampler() as sampler:
            finetune = measure.finetune_steps(maps, labels, 12, steps, train_lib.MAPS_VIEWS)
        del maps
        guide = measure.guide_steps(images, labels, 12, steps)
        window = finetune.window or (0.0, time.time())
        busy = hardware.utilization_in(sampler.samples, *window)
        utilisation = sum(busy) / len(busy) if busy else None
        rates = run._rates(
            first_ips, features, last_block, guide, head_s, finetune, train_lib.MAPS_VIEWS, True
        )
        guide_total = estimate.guide_seconds(full, rates, 20)["total"]
        fast_total = estimate.fast_seconds(full, rates, 12, 10)["total"]
        results[precision] = {
            "guide": guide.images_per_second,
            "finetune": finetune.images_per_second,
            "utilisation": utilisation if utilisation is not None else float("nan"),
        }
        report.add(section, "guide recipe", guide.images_per_second, "img/s")
        report.add(section, "phase 1: block4 maps", features.images_per_second, "img/s")
        report.add(section, "phase 1: block5 on the maps", last_block.images_per_second, "img/s")
        report.add(section, "phase 1: head epoch", head_s, "s")
        report.add(section, "phase 2: fine-tuning", finetune.images_per_second, "img/s")
        report.add(
            section, "GPU utilisation in phase 2", utilisation, "%",
            f"mean of {len(busy)} nvidia-smi samples (200 ms) over the timed steps",
        )  # fmt: skip
        report.add(section, "guide recipe end to end (20 epochs)", guide_total, "s", "extrapolated")
        report.add(
            section, "fast recipe end to end", fast_total, "s", "extrapolated, no early stop"
        )
        report.add(section, "fast vs guide", guide_total / fast_total, "x")
        for label, usd in (("on-demand", on_demand), ("spot", spot)):
            how = f"{machine} + GPU + static IP at ${usd}/h" if usd else "no price in the catalogue"
            report.add(
                section,
                f"phase 2 images per dollar ({label})",
                report_lib.images_per_dollar(finetune.images_per_second, usd),
                "img/$",
                how,
            )
        measure._clear()

    job_precision = "mixed_float16" if gpu.compute_capability >= 7.0 else "float32"
    report.targets.append(
        Target(
            f"GPU utilisation in phase 2 ({job_precision}, as the job runs)",
            results[job_precision]["utilisation"],
            ">=",
            90,
            "%",
        )
    )
    speedup = report_lib.ratio(results["mixed_float16"]["guide"], results["float32"]["guide"])
    report.targets.append(
        Target(
            "mixed_float16 vs float32, guide training step",
            speedup if gpu.compute_capability >= 7.0 else None,
            ">=",
            2,
            "x",
            "" if gpu.compute_capability >= 7.0 else "target applies to CC >= 7.0 only",
        )
    )
    print(report_lib.format_text(report))
    run.write_outputs(report, docs=False, stem="latest-gpu")
    return 0
