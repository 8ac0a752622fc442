"""`bench/run.py --gpu`: the training figures on a GPU at float32 and at the job's mixed
precision, with XLA and without, GPU utilisation while fine-tuning, the features phase against
the card's 16-bit peak, images per dollar at the catalogue's prices, and the real job end to
end on the full-size synthetic data.

Without a GPU it prints "skipped: no GPU" and returns 0, so it is safe to run anywhere.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench import common, dataset, flops, hardware, precisions
from bench import report as report_lib
from bench.common import Plan
from bench.precisions import Measured, Setting
from bench.report import Report, Target
from kgg.common.contract import CLI_NAME

# Timed steps per rate on a GPU (a step takes milliseconds; 30 average out the launch jitter).
GPU_STEPS = 30
# The 2018 guide took ~43 min on its K80; issue 14 asks for the fast recipe in 3 on an H100.
H100_E2E_TARGET_S = 180
SECTION_XLA = "5. XLA (jit_compile) at the job's precision: with / without"


def prices(gpu_name: str) -> tuple[str | None, float | None, float | None]:
    """(machine type, on-demand $/h, spot $/h) of a 1-GPU VM of this GPU, from infra's catalogue;
    None where the catalogue has no price (it never guesses one)."""
    from kgg.infra import catalogue

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


def gpu_settings(auto_policy: str, job_xla: bool) -> list[Setting]:
    """float32 as the job would run it, the job's own choice, and that choice with XLA flipped:
    the mixed-precision speed-up and XLA's effect, each against what the job does."""
    chosen = [Setting("float32", job_xla), Setting(auto_policy, job_xla, auto=True)]
    chosen.append(Setting(auto_policy, not job_xla))
    unique: dict[tuple[str, bool], Setting] = {}
    for setting in chosen:
        key = (setting.policy, setting.jit_compile)
        unique[key] = setting if setting.auto else unique.get(key, setting)
    return list(unique.values())


def end_to_end(data_root: Path, image_size: int, cache: Path, log_path: Path) -> float | None:
    """Wall seconds of the real `kgg train` (fast recipe, defaults, random
    weights: no download) on `data_root` from a cold image cache; None when it failed. Its
    output goes to `log_path`."""
    out, work = cache / "e2e-out", cache / "e2e-cache"
    for path in (out, work):
        shutil.rmtree(path, ignore_errors=True)
    args = [
        sys.executable, "-m", CLI_NAME, "train", "--data", str(data_root), "--out", str(out),
        "--cache-dir", str(work), "--weights", "none", "--image-size", str(image_size),
        "--no-progress",
    ]  # fmt: skip
    started = time.perf_counter()
    with log_path.open("w") as log_file:
        job = subprocess.run(
            args, cwd=Path(__file__).resolve().parents[1], stdout=log_file,
            stderr=subprocess.STDOUT, check=False,
        )  # fmt: skip
    seconds = time.perf_counter() - started
    shutil.rmtree(work, ignore_errors=True)
    return seconds if job.returncode == 0 else None


def main(plan: Plan, data_root: Path) -> int:
    gpus = hardware.list_gpus()
    if not gpus:
        print("skipped: no GPU (nvidia-smi is missing or lists no GPU); nothing measured")
        return 0
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        print(f"skipped: no GPU visible to TensorFlow (nvidia-smi lists {gpus[0].name})")
        return 0

    from bench import measure
    from kgg.job import maps as maps_lib
    from kgg.job import runtime
    from kgg.job.config import TrainConfig

    defaults = TrainConfig(data="", out="")
    gpu = gpus[0]
    cpu, peak = hardware.read_cpu()
    report = Report(mode=f"gpu ({plan.name} data)", machine=common.machine_description(cpu, peak))
    report.machine["gpu"] = (
        f"{len(gpus)} x {gpu.name}, compute capability {gpu.compute_capability}, "
        f"{gpu.memory_mib} MiB, driver {gpu.driver}"
    )
    summary = dataset.ensure(data_root, plan.train_images, plan.test_images)
    report.notes.append(f"Synthetic data: {summary['train']} train, {summary['test']} test images.")
    report.not_measured.append(
        "peak RSS on the GPU VM (the CPU run measures it; host memory does not depend on the GPU)"
    )
    pipe, images, labels = measure.input_pipeline(
        data_root, common.CACHE / "pipeline", 12, plan.image_size
    )
    first_ips = pipe.images / pipe.first_epoch_s
    section_pipe = "1. Input pipeline (CPU side of the GPU VM)"
    report.add(section_pipe, f"first epoch: decode+resize to {plan.image_size}", first_ips, "img/s")
    report.add(section_pipe, "cached epoch", pipe.images / pipe.cached_epoch_s, "img/s")

    auto = runtime.local_precision()
    job_xla = len(gpus) == 1  # as runtime.configure decides
    steps = dataclasses.replace(
        plan, guide_steps=GPU_STEPS, feature_steps=GPU_STEPS, finetune_steps=GPU_STEPS,
        forward_steps=GPU_STEPS, training_steps=GPU_STEPS,
    )  # fmt: skip
    full = common.full_sizes()
    measured = precisions.measure_settings(
        gpu_settings(auto.policy, job_xla), images, labels, steps, defaults.unfreeze_blocks,
        maps_lib.MAPS_VIEWS, full, sample_gpu=True,
    )  # fmt: skip
    del images
    epochs = (defaults.guide_epochs, defaults.head_epochs, defaults.finetune_epochs)
    precisions.add_rows(
        report, measured, first_ips, plan.image_size, defaults.unfreeze_blocks,
        maps_lib.MAPS_VIEWS, epochs, full,
    )  # fmt: skip
    job = next(m for m in measured if m.setting.auto)
    _add_gpu_rows(report, measured, gpu.name, plan.image_size)
    _add_xla_rows(report, measured, job)

    common.log("the real job end to end, fast recipe at --precision auto, cold image cache")
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    log_path = common.RESULTS / "e2e-gpu.log"
    seconds = end_to_end(data_root, plan.image_size, common.CACHE, log_path)
    output = log_path.read_text(errors="replace")
    section_e2e = precisions.SECTION_E2E
    report.add(
        section_e2e,
        f"the real job end to end, fast recipe, {job.setting.label}",
        seconds,
        "s",
        "kgg train, defaults, --weights none, cold image cache: decode, features, "
        f"head, fine-tuning (early stopping on), evaluation, results; log {log_path.name}",
    )
    retracing = sum("retracing" in line for line in output.splitlines())
    report.add(section_e2e, "retracing warnings in the job's output", retracing, "lines")
    if seconds is None:
        report.not_measured.append(f"the job end to end failed:\n{output[-2000:]}")
    _add_targets(report, measured, job, gpu, seconds, plan.image_size)
    print(report_lib.format_text(report))
    common.write_outputs(report, docs=False, stem="latest-gpu")
    return 0


def _add_gpu_rows(report: Report, measured: list[Measured], gpu_name: str, size: int) -> None:
    """Phase 2's utilisation and images per dollar, and phase 1 against the 16-bit peak."""
    section = precisions.SECTION_TRAIN
    machine, on_demand, spot = prices(gpu_name)
    peak = hardware.gpu_16bit_peak_flops(gpu_name)
    for m in measured:
        report.add(
            section, f"GPU utilisation in phase 2, {m.setting.label}", m.utilisation, "%",
            "mean of nvidia-smi samples (200 ms) over the timed steps",
        )  # fmt: skip
        for label, usd in (("on-demand", on_demand), ("spot", spot)):
            how = f"{machine} + GPU + static IP at ${usd}/h" if usd else "no price in the catalogue"
            report.add(
                section,
                f"phase 2 images per dollar ({label}), {m.setting.label}",
                report_lib.images_per_dollar(m.finetune.images_per_second, usd),
                "img/$",
                how,
            )
        report.add(
            section,
            f"phase 1 block4 maps vs the 16-bit peak, {m.setting.label}",
            _features_share(m, peak, size),
            "%",
            f"of {peak / 1e12:.0f} TFLOP/s dense (datasheet)" if peak else "GPU not in the table",
        )


def _features_share(m: Measured, peak: float | None, size: int) -> float | None:
    """The block4 maps pass's achieved FLOP/s as a percentage of the dense 16-bit peak."""
    if peak is None:
        return None
    vgg = flops.vgg16_layers(size)
    trunk = [layer for layer in vgg if not layer.name.startswith("block5")]
    return 100 * m.features.images_per_second * flops.forward_flops(trunk) / peak


XLA_PATHS = (
    ("phase 1: block4 maps (predict)", lambda m: m.features.images_per_second),
    ("phase 1: block5 on the maps (predict)", lambda m: m.last_block.images_per_second),
    ("phase 2: fine-tuning (fit)", lambda m: m.finetune.images_per_second),
    ("guide recipe (fit)", lambda m: m.guide.images_per_second),
    ("VGG16 forward", lambda m: m.forward.images_per_second),
    ("VGG16 training step", lambda m: m.training.images_per_second),
)


def _add_xla_rows(report: Report, measured: list[Measured], job: Measured) -> None:
    """Each path's rate with XLA over its rate without, at the job's policy: where a ratio is
    below 1, XLA is slower there (runtime.Runtime.jit_compile)."""
    pair = {m.setting.jit_compile: m for m in measured if m.setting.policy == job.setting.policy}
    if len(pair) < 2:
        return
    for name, rate in XLA_PATHS:
        report.add(
            SECTION_XLA,
            f"{name}, {job.setting.policy}",
            report_lib.ratio(rate(pair[True]), rate(pair[False])),
            "x",
            "images/s with XLA / without, same run",
        )


def _add_targets(
    report: Report,
    measured: list[Measured],
    job: Measured,
    gpu: hardware.GpuInfo,
    e2e_seconds: float | None,
    size: int,
) -> None:
    """Issue 14's GPU targets, for what the job runs (its precision and XLA setting)."""
    mixed = job.setting.policy != "float32"
    why = "" if mixed else f"the job runs float32 on compute capability {gpu.compute_capability}"
    baseline = next(
        m for m in measured
        if m.setting.policy == "float32" and m.setting.jit_compile == job.setting.jit_compile
    )  # fmt: skip
    for name, job_steps, float32_steps in (
        ("VGG16 forward", job.forward, baseline.forward),
        ("VGG16 training step", job.training, baseline.training),
    ):
        speedup = job_steps.images_per_second / float32_steps.images_per_second
        report.targets.append(
            Target(
                f"{job.setting.policy} vs float32, {name}",
                speedup if mixed else None,
                ">=",
                2,
                "x",
                why,
            )
        )
    report.targets.append(
        Target(f"GPU utilisation in phase 2, {job.setting.label}", job.utilisation, ">=", 90, "%")
    )
    peak = hardware.gpu_16bit_peak_flops(gpu.name)
    report.targets.append(
        Target(
            "phase 1 block4 maps vs the dense 16-bit peak",
            _features_share(job, peak, size) if mixed else None,
            ">=",
            30,
            "%",
            why or ("" if peak else "GPU not in hardware.GPU_16BIT_DENSE_TFLOPS"),
        )
    )
    h100 = "h100" in gpu.name.lower()
    report.targets.append(
        Target(
            "the real job end to end on the full-size data (H100)",
            e2e_seconds if h100 else None,
            "<=",
            H100_E2E_TARGET_S,
            "s",
            "" if h100 else f"the target is for an H100; {gpu.name} took {e2e_seconds} s",
        )
    )
