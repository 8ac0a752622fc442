"""What the CPU run (bench/run.py) and the GPU run (bench/gpu.py, bench/precisions.py) share:
the paths, the plans, the log line, the machine's description, the job's split sizes and the
writing of the results. Imported by them, importing none of them, so the arrows run one way."""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from bench import dataset, estimate, hardware
from bench import report as report_lib
from bench import scale as scale_lib
from bench.report import Report

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "bench" / ".cache"
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs" / "BENCHMARKS.md"
GIB = 1024**3


@dataclass(frozen=True)
class Plan:
    """How much to measure: dataset size and the number of timed steps per phase."""

    name: str
    train_images: int
    test_images: int
    guide_steps: int
    feature_steps: int
    finetune_steps: int
    forward_steps: int
    training_steps: int
    probe_steps: int
    image_size: int = 224
    # --precision values measured besides float32 and auto (the job's default).
    precisions: tuple[str, ...] = ()
    # The real job at 1x and 10x the data (bench/scale.py).
    scale: scale_lib.ScalePlan = scale_lib.FULL


FULL = Plan("full", dataset.REAL_TRAIN_IMAGES, dataset.REAL_TEST_IMAGES, 3, 4, 4, 4, 3, 2)
# Checks that every part runs, in minutes: 112 px (4x fewer FLOPs), figures not comparable;
# bfloat16 too where the hardware computes it (emulated, one guide step takes minutes).
QUICK = Plan("quick", 120, 20, 1, 1, 1, 1, 1, 1, image_size=112, precisions=("bfloat16",),
             scale=scale_lib.QUICK)  # fmt: skip


def log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def machine_description(cpu: hardware.CpuInfo, peak: hardware.Peak) -> dict[str, str]:
    import keras
    import tensorflow as tf

    memory_kib = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    simd = [f for f in ("avx512f", "avx512_bf16", "avx2", "fma") if f in cpu.flags]
    return {
        "summary": f"{cpu.model_name}, {cpu.logical_cpus} CPUs, TF {tf.__version__}",
        "date (UTC)": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
        "cpu": f"{cpu.model_name} ({cpu.vendor}, family {cpu.family})",
        "cpus": (
            f"{cpu.logical_cpus} logical = {cpu.physical_cores} cores x "
            f"{cpu.threads_per_core} thread(s)" + (", KVM/VM guest" if cpu.hypervisor else "")
        ),
        "simd flags": " ".join(simd),
        "clock": f"{peak.clock_ghz:.3f} GHz ({peak.clock_source})",
        "peak fp32": peak.formula(),
        "peak assumptions": "; ".join(peak.assumptions),
        "memory": f"{memory_kib / 1024**2:.1f} GiB",
        "software": (
            f"Python {platform.python_version()}, TensorFlow {tf.__version__}, Keras "
            f"{keras.__version__}, oneDNN "
            f"{'off' if os.environ.get('TF_ENABLE_ONEDNN_OPTS') == '0' else 'on'}"
        ),
    }


def split_sizes(labels: np.ndarray, test: int) -> estimate.Sizes:
    """Train/validation/test counts as the job splits them (its own stratified_split)."""
    from kgg.job import splits as splits_lib
    from kgg.job.config import TrainConfig

    config = TrainConfig(data="", out="")
    train_idx, val_idx = splits_lib.stratified_split(labels, config.val_split, config.seed)
    return estimate.Sizes(len(train_idx), len(val_idx), test)


def full_sizes(test: int = dataset.REAL_TEST_IMAGES) -> estimate.Sizes:
    """The split of the full-size data (the real class counts), whatever size was measured."""
    counts = list(dataset.REAL_CLASS_COUNTS.values())
    labels = np.repeat(np.arange(len(counts)), counts)
    return split_sizes(labels, test)


DOCS_HEADER = """# Benchmarks

The last full run of `uv run python bench/run.py` (issues 6, 14 and 23) on each kind of machine
(CPU and SIMD flags: the precision the job picks depends on them), each with its machine, and
the last `--scale` run where it is newer. A run replaces the last of its kind; `--docs-from
JSON` records a run saved elsewhere (its bench/results/latest.json). A full run takes about 10
minutes per precision on an idle 2-core machine, more when it is shared, plus 6 minutes once to
generate the synthetic data (2.9 GB in `bench/.cache/`), plus the scale part (about 10 minutes,
25 GB of disk while it runs). `--precisions float32,bfloat16` picks what is measured besides
float32 and the job's `--precision auto`. `--scale` measures the input pipeline and the scale
part alone. `--quick` checks that every part runs in a few minutes (112 px, 120 images, float32
and bfloat16: figures not comparable); `--gpu` measures a GPU VM (float32, the job's mixed
precision with and without XLA, the real job end to end) and prints `skipped: no GPU` elsewhere.

How the figures are obtained:
- **Everything runs the job's own code** (kgg/job/): `images.load_images` (decode + resize
  into the `.npy` cache on disk), `pipeline.make_dataset` (tf.data), `model.build_*` and
  `train.compile_model` / `write_frozen_maps` / `pooled_features`. VGG16 weights are random
  (`weights=None`): speed does not depend on their values.
- **The fast recipe** (one block unfrozen, the default) caches the frozen blocks 1-4's
  `block4_pool` maps once: of every training image as is and flipped left-right (its phase-2
  augmentation), and of every validation image; block5 + pooling on those maps gives the head's
  features, and phase 2 trains block5 + head on the maps. The saved model is the full image model.
- **Rates** are timed on a fixed number of batches of 32 after one warm-up batch (which pays for
  tracing); times for the full data are **extrapolated** from those rates: decode train + test,
  then each phase's images at its rate (the features phase: the maps of each view, then block5 on
  train + validation), a validation pass per epoch (the guide: the whole forward; fine-tuning:
  block5 on the cached maps), and the final evaluation of validation + test through the whole
  image model. The fast recipe is costed at its full default length (12 head + 10 fine-tuning
  epochs); early stopping can only shorten it.
- **Peak RSS** is the `ru_maxrss` of a child process (`os.wait4`) running the real
  `kgg train` on the full-size data from a cold image cache, with every fit and
  predict cut to a few steps (bench/probe.py): the image cache and the block4 maps (written at
  full size, read batch by batch, never held whole), the tf.data pipelines, the features, the
  models and optimizer state are all full size; only the step count is bounded. Runs before
  issue 23 held the decoded images and the maps in memory: their peak RSS grew with the data.
- **Data at scale** (section 6, issue 23): the same child at 1x and 10x the seed's data (4,750
  and 47,500 training images) on small synthetic sources, side by side: peak RSS, the most the
  caches held on disk (sampled), and the decode seconds. Section 7 projects the fast recipe for
  47,500 images onto the default VM (n1-highmem-4 + T4): memory and disk as measured at 10x, time
  as a lower bound (every phase at the T4's dense 16-bit peak, decoding on its 4 vCPUs at this
  machine's rate per core).
- **Peak FLOP/s** = cores x clock x fp32 FLOPs/cycle from `/proc/cpuinfo` (assumptions below);
  FLOPs per image are counted from VGG16's layer shapes (bench/flops.py), a training step as
  forward + weight gradients of trainable layers + input gradients above the first trainable one.
- **CPUs busy** = process CPU seconds / wall seconds while timed: below the core count means other
  processes shared the machine, and the rates are lower than on an idle one.
- **Precisions side by side**: each row is measured once per Keras dtype policy (`float32`,
  `mixed_bfloat16`, ...), one after the other in the same run, every model built in that policy as
  `--precision` makes the job build it; `(auto)` marks the job's own choice on the machine. Absolute
  rates drift between runs on a shared machine; ratios between rows of one run hold. The load
  average (1, 5, 15 min) at start and end is recorded with the machine.

"""


def write_outputs(report: Report, docs: bool, stem: str = "latest") -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(report_lib.to_json(report))
    (RESULTS / f"{stem}.md").write_text(report_lib.format_markdown(report))
    if docs:
        write_docs(report)


def write_docs(report: Report) -> None:
    """Records `report` on the page in place of the last run of its kind of machine."""
    page = DOCS.read_text() if DOCS.is_file() else ""
    DOCS.write_text(report_lib.merge_docs(page, report, DOCS_HEADER))
