"""`bench/run.py --scale`: the real job's memory, disk and decode time at 1x and 10x the seed's
data side by side (issue 23), and what the fast recipe takes for 47,500 images on the default
T4 VM.

Each run is the real `kgg train` (fast recipe, random weights) through
bench/probe.py in a child process: every fit and predict cut to a few steps, everything else at
full size (the image cache, the block4 maps of every image and view, the splits and the
pipelines over them, the features, the results). The sources are small PNGs (24-64 px) resized
to the job's image size like any other, so generating 55,000 takes seconds; what the job holds
in memory and writes to disk does not depend on the sources' size, only the decode time does
(section 1 measures it on full-size photos).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import dataset, estimate, flops, hardware
from bench.report import Report, Target, format_duration

SECTION_SCALE = "6. Data at scale: the real job at 1x and 10x the seed's data"
SECTION_PROJECTION = "7. Projection: the fast recipe at 10x the seed's data on the default T4 VM"
GIB = 1024**3
# What the seed's data is multiplied by, and the growth each figure may show (issue 23).
RSS_GROWTH_LIMIT = 1.3
DECODE_GROWTH_LIMIT = 11.0
# The default VM: a T4 gets n1-highmem-4 (kgg/infra/catalogue.py), 4 vCPUs and 6.5 GB per vCPU
# (GCE's machine types), with a 100 GB boot disk (Pulumi.yaml bootDiskSizeGb).
VM = "n1-highmem-4 + 1x T4"
VM_VCPUS = 4
VM_MEMORY_GB = 26.0
VM_DISK_GB = 100.0
T4_NAME = "Tesla T4"
# Disk sampled this often for the peak the caches reach while the job runs.
DISK_SAMPLE_SECONDS = 0.5


@dataclass(frozen=True)
class ScalePlan:
    """The seed's data (1x) and the factors it is run at, on sources of `size_mix`."""

    name: str
    train_images: int
    test_images: int
    image_size: int
    probe_steps: int
    factors: tuple[int, ...] = (1, 10)
    size_mix: tuple[tuple[float, int, int], ...] = dataset.SMALL_SIZE_MIX

    def counts(self, factor: int) -> tuple[int, int]:
        """(train, test) images at `factor` times the seed's data."""
        return factor * self.train_images, factor * self.test_images


FULL = ScalePlan("full", dataset.REAL_TRAIN_IMAGES, dataset.REAL_TEST_IMAGES, 224, 2)
# Checks that the part runs, in a minute or two: figures not comparable.
QUICK = ScalePlan("quick", 120, 20, 112, 1)


@dataclass(frozen=True)
class ScaleRun:
    """One run of the real job at `factor` times the seed's data."""

    factor: int
    train: int
    test: int
    peak_rss: float | None  # bytes, ru_maxrss of the child; None when the job failed
    cache_bytes: int  # the most the caches (images, maps) held on disk at once
    decode_seconds: float | None
    seconds: float
    tail: str


def data_root(cache: Path, plan: ScalePlan, factor: int) -> Path:
    train, test = plan.counts(factor)
    low, high = plan.size_mix[0][1], plan.size_mix[-1][2]
    return cache / f"scale-{train}-{test}-{low}-{high}px"


def files_bytes(folders: list[Path]) -> int:
    """The bytes of every file under `folders` (files vanishing meanwhile are skipped)."""
    total = 0
    for folder in folders:
        for dirpath, _, filenames in os.walk(folder):
            for name in filenames:
                try:
                    total += os.stat(os.path.join(dirpath, name)).st_size
                except FileNotFoundError:
                    continue
    return total


class DiskPeak(threading.Thread):
    """The most bytes `folders` held at once while it ran (sampled every DISK_SAMPLE_SECONDS)."""

    def __init__(self, folders: list[Path], interval: float = DISK_SAMPLE_SECONDS) -> None:
        super().__init__(daemon=True)
        self.folders, self.interval = folders, interval
        self.peak = 0
        self._done = threading.Event()

    def run(self) -> None:
        while True:
            self.peak = max(self.peak, files_bytes(self.folders))
            if self._done.wait(self.interval):
                return

    def finish(self) -> int:
        self._done.set()
        self.join()
        self.peak = max(self.peak, files_bytes(self.folders))
        return self.peak


def probe_args(root: Path, out: Path, cache: Path, plan: ScalePlan) -> list[str]:
    """The child's command: the real job, fast recipe, every fit/predict cut by bench.probe."""
    return [
        sys.executable, "-m", "bench.probe", str(plan.probe_steps), "--",
        "--data", str(root), "--out", str(out), "--cache-dir", str(cache), "--recipe", "fast",
        "--weights", "none", "--no-progress", "--image-size", str(plan.image_size),
        "--head-epochs", "1", "--finetune-epochs", "1",
    ]  # fmt: skip


def run_one(plan: ScalePlan, factor: int, cache: Path, results: Path, repo: Path) -> ScaleRun:
    """The real job at `factor` x the seed's data in a child, from a cold cache: its peak RSS
    (wait4), the caches' peak bytes on disk, and its decode seconds (bench.probe's report)."""
    train, test = plan.counts(factor)
    root = data_root(cache, plan, factor)
    dataset.ensure(root, train, test, size_mix=plan.size_mix)
    work = cache / f"scale-{factor}x-run"
    shutil.rmtree(work, ignore_errors=True)
    out, job_cache, report = work / "out", work / "cache", work / "probe.json"
    work.mkdir(parents=True)
    results.mkdir(parents=True, exist_ok=True)
    log_path = results / f"scale-{factor}x.log"
    env = {**os.environ, "BENCH_PROBE_REPORT": str(report)}
    disk = DiskPeak([out, job_cache])
    started = time.perf_counter()
    with log_path.open("w") as log_file:
        disk.start()
        child = subprocess.Popen(
            probe_args(root, out, job_cache, plan), cwd=repo, stdout=log_file,
            stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    cache_bytes = disk.finish()
    decoded = json.loads(report.read_text()) if report.is_file() else {}
    tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
    shutil.rmtree(work, ignore_errors=True)
    failed = os.waitstatus_to_exitcode(status) != 0
    return ScaleRun(
        factor, train, test,
        None if failed else usage.ru_maxrss * 1024.0,  # Linux reports KiB
        cache_bytes, decoded.get("decode_seconds"), seconds, tail,
    )  # fmt: skip


def ratio(runs: list[ScaleRun], value: str) -> float | None:
    """The figure `value` of the largest run over the smallest's; None if either is missing."""
    low, high = getattr(runs[0], value), getattr(runs[-1], value)
    return None if low is None or high is None or not low else high / low


def add_rows(report: Report, runs: list[ScaleRun]) -> None:
    """Peak RSS, cache bytes and decode seconds of each run side by side, then their targets."""
    for run in runs:
        if run.peak_rss is None:
            report.not_measured.append(f"scale {run.factor}x: the job failed:\n{run.tail}")
    rows = (
        ("peak RSS", "GiB", lambda r: None if r.peak_rss is None else r.peak_rss / GIB,
         "ru_maxrss of the real job in a child (wait4), every fit/predict cut to a few steps"),
        ("cache on disk", "GB", lambda r: r.cache_bytes / 1e9,
         "the most bytes the image cache and the block4 maps held at once (sampled)"),
        ("decode", "s", lambda r: r.decode_seconds,
         "images.load_images of train/ and test/ on a cold cache, small sources"),
    )  # fmt: skip
    for name, unit, value, how in rows:
        for run in runs:
            label = f"{name}, {run.factor}x ({run.train} train + {run.test} test)"
            ran = f"; child ran {run.seconds:.0f} s" if name == "peak RSS" else ""
            report.add(SECTION_SCALE, label, value(run), unit, how + ran)
    top, base = runs[-1].factor, runs[0].factor
    report.targets += [
        Target(f"peak RSS at {top}x the data vs {base}x", ratio(runs, "peak_rss"), "<=",
               RSS_GROWTH_LIMIT, "x", "nothing of the data's size is held in memory"),
        Target(f"decode time at {top}x the data vs {base}x", ratio(runs, "decode_seconds"),
               "<=", DECODE_GROWTH_LIMIT, "x", "decoding grows with the files, no faster"),
    ]  # fmt: skip


def t4_rates(image_size: int, decode_ips: float | None) -> estimate.Rates:
    """Every phase of the fast recipe at the T4's dense 16-bit peak (an upper bound of any
    rate a T4 reaches), and decoding at `decode_ips` (0 when not measured)."""
    peak = hardware.gpu_16bit_peak_flops(T4_NAME)
    assert peak is not None
    layers = flops.vgg16_layers(image_size)
    trunk = [layer for layer in layers if not layer.name.startswith("block5")]
    block5 = [layer for layer in layers if layer.name.startswith("block5")]
    trunk_ips = peak / flops.forward_flops(trunk)
    block5_ips = peak / flops.forward_flops(block5)
    return estimate.Rates(
        decode_ips=decode_ips or float("inf"),
        forward_ips=1 / (1 / trunk_ips + 1 / block5_ips),
        guide_ips=peak / flops.training_flops(flops.vgg16_layers(image_size, top=True)),
        features_ips=trunk_ips,
        head_epoch_s=0.0,  # a dense layer on 512 features: microseconds per image
        finetune_ips=peak / flops.training_flops(block5),
        last_block_ips=block5_ips,
        views=2,
    )


def add_projection(
    report: Report,
    run: ScaleRun,
    sizes: estimate.Sizes,
    decode_ips_per_core: float | None,
    source_bytes_per_file: float | None,
    image_size: int,
    epochs: tuple[int, int],
) -> None:
    """The fast recipe for `sizes` on the default T4 VM: memory and disk from the run at that
    size, time as a lower bound (each phase at the T4's peak, decoding on the VM's vCPUs at this
    machine's rate per core). `epochs`: head and fine-tuning epochs."""
    decode_ips = decode_ips_per_core * VM_VCPUS if decode_ips_per_core else None
    parts = estimate.fast_seconds(sizes, t4_rates(image_size, decode_ips), *epochs)
    if decode_ips is None:
        parts["total"] -= parts.pop("decode")
    listed = ", ".join(f"{k} {format_duration(v)}" for k, v in parts.items() if k != "total")
    decode_how = (
        f"decode at {VM_VCPUS} vCPUs x {decode_ips_per_core:.0f} img/s per core (section 1)"
        if decode_ips
        else "decode not included (section 1 not measured)"
    )
    report.add(
        SECTION_PROJECTION, f"fast recipe ({epochs[0]} head + {epochs[1]} fine-tune epochs), "
        f"{sizes.train} train / {sizes.val} val / {sizes.test} test", parts["total"], "s",
        f"a lower bound on {VM}: every phase at the T4's dense 16-bit peak, {decode_how}; "
        f"{listed}",
    )  # fmt: skip
    rss = None if run.peak_rss is None else run.peak_rss / 1e9
    report.add(SECTION_PROJECTION, "peak RSS of the job", rss, "GB",
               f"measured at {run.factor}x above ({run.train} train images); the VM has "
               f"{VM_MEMORY_GB:g} GB (on a GPU, CUDA's host memory comes on top)")  # fmt: skip
    mirror = None
    if source_bytes_per_file:
        mirror = (run.train + run.test) * source_bytes_per_file
    disk = None if mirror is None else (run.cache_bytes + mirror) / 1e9
    report.add(SECTION_PROJECTION, "disk: the data's mirror and the caches", disk, "GB",
               f"caches measured at {run.factor}x above, the mirror at the full-size synthetic "
               f"data's mean PNG size; of the {VM_DISK_GB:g} GB boot disk (bootDiskSizeGb), "
               "which also holds the system, the driver and the CUDA wheels")  # fmt: skip
    report.targets.append(
        Target(f"peak RSS at {run.train} train images vs the default VM's memory", rss, "<=",
               VM_MEMORY_GB, "GB", VM)
    )  # fmt: skip


def measure(
    plan: ScalePlan, cache: Path, results: Path, repo: Path, log: Callable[[str], None]
) -> list[ScaleRun]:
    """Every run of the plan, smallest first."""
    runs = []
    for factor in plan.factors:
        train, test = plan.counts(factor)
        log(f"scale {factor}x: the real job on {train} train + {test} test images")
        runs.append(run_one(plan, factor, cache, results, repo))
    return runs
