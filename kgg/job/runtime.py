"""Device setup: the precision the hardware computes fastest in, XLA where Keras uses it, and
MirroredStrategy across several GPUs.

The choice of precision is a pure function of (requested precision, GPUs' compute capabilities,
CPU flags), so it is tested without TensorFlow; `configure` applies it."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# --precision values and the Keras dtype policy each one sets. A "mixed" policy computes in 16
# bits and keeps the variables in float32. https://keras.io/api/mixed_precision/policy/
POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
PRECISIONS: tuple[str, ...] = ("auto", *POLICIES)
# Tensor Cores (fast float16 matmuls) arrived with Volta, compute capability 7.0; on a K80 (3.7)
# or P100 (6.0) mixed precision is slower. https://www.tensorflow.org/guide/mixed_precision
FLOAT16_MIN_CC = (7, 0)
# bfloat16 Tensor Cores arrived with Ampere (A100 8.0, L4 8.9, H100 9.0). bfloat16 has float32's
# exponent range, so it needs no loss scaling (float16 does: Keras' compile adds it).
BFLOAT16_MIN_CC = (8, 0)
# CPUs with bfloat16 arithmetic (oneDNN uses it): AVX512_BF16 (AMD Zen 4+, Intel Cooper Lake)
# and AMX (Intel Sapphire Rapids+). Without them TensorFlow emulates bfloat16: no faster than
# float32 (docs/BENCHMARKS.md).
BFLOAT16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class Precision:
    """The Keras dtype policy a run computes in, and why it was chosen."""

    policy: str
    reason: str
    # True when the hardware has no native arithmetic for it: slower than float32, not faster.
    emulated: bool = False


def choose_precision(
    requested: str,
    compute_capabilities: list[tuple[int, int]],
    cpu_flags: frozenset[str],
) -> Precision:
    """The policy for `--precision requested` on this hardware: GPUs (every one counts: the
    slowest decides) when there are any, else the CPU.

    auto: mixed_bfloat16 on GPUs of compute capability >= 8.0 and on CPUs with AVX512_BF16 or
    AMX; mixed_float16 on GPUs of 7.x; float32 otherwise. Any other value is taken as asked,
    with a note when the hardware has no native support for it."""
    if requested not in PRECISIONS:
        raise ValueError(f"--precision {requested!r} is unknown; use one of {list(PRECISIONS)}")
    if compute_capabilities:
        oldest = min(compute_capabilities)
        device = f"GPU compute capability {oldest[0]}.{oldest[1]}"
        native = {"float32"}
        if oldest >= FLOAT16_MIN_CC:
            native.add("float16")
        if oldest >= BFLOAT16_MIN_CC:
            native.add("bfloat16")
        preferred = ["bfloat16", "float16"]
    else:
        bf16 = sorted(cpu_flags & BFLOAT16_CPU_FLAGS)
        device = f"CPU with {'/'.join(bf16).upper()}" if bf16 else "CPU without AVX512_BF16/AMX"
        native = {"float32", "bfloat16"} if bf16 else {"float32"}
        preferred = ["bfloat16"]
    if requested == "auto":
        fastest = next((p for p in preferred if p in native), "float32")
        return Precision(POLICIES[fastest], f"auto: {device}")
    if requested in native:
        return Precision(POLICIES[requested], f"--precision {requested}")
    where = device if compute_capabilities else "this CPU"
    return Precision(
        POLICIES[requested],
        f"--precision {requested}, emulated on {where}: expect it slower than float32",
        emulated=True,
    )


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags of the first processor in /proc/cpuinfo text (none elsewhere)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def this_cpu_flags() -> frozenset[str]:
    """This machine's CPU flags; empty where there is no /proc/cpuinfo (macOS, Windows)."""
    try:
        return cpu_flags(CPUINFO.read_text())
    except OSError:
        return frozenset()


@dataclass(frozen=True)
class Runtime:
    strategy: Any
    gpus: list[str]
    precision: Precision
    # XLA (Model.compile's jit_compile) for training and prediction: what Keras' "auto" picks
    # (on with one GPU, off on CPUs and under MirroredStrategy), set explicitly so that the
    # job's predictions and bench/run.py --gpu use the same setting.
    jit_compile: bool = False

    @property
    def replicas(self) -> int:
        return int(getattr(self.strategy, "num_replicas_in_sync", 1))

    def batch(self, batch_size: int) -> int:
        """The global batch, rounded up to a multiple of the replicas.

        Keras 3 with MirroredStrategy fails when the first batch does not split evenly across
        replicas (e.g. batch 32 on 3 GPUs); rounding up keeps every full batch even."""
        return -(-batch_size // self.replicas) * self.replicas

    def describe(self) -> str:
        precision = f"{self.precision.policy} ({self.precision.reason})"
        xla = "XLA" if self.jit_compile else "no XLA"
        if not self.gpus:
            return f"CPU only, {precision}, {xla}, no distribution strategy"
        strategy = type(self.strategy).__name__
        return f"{len(self.gpus)} GPU(s) {self.gpus}, {precision}, {xla}, {strategy}"


def quiet_tensorflow() -> None:
    """Hides TensorFlow's C++ info logs (CUDA probing on CPUs) unless the user set a level."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@contextlib.contextmanager
def keeping_global_policy() -> Iterator[None]:
    """Puts Keras' global dtype policy back on the way out: a notebook's own models after a
    run (or the next test) are built in what they were built in before it."""
    before = _global_policy()
    try:
        yield
    finally:
        if _global_policy() != before:
            set_policy(before or "float32")


def _global_policy() -> str | None:
    """Keras' global dtype policy, or None while Keras is not imported (the default applies)."""
    if "keras" not in sys.modules:
        return None
    import keras

    return str(keras.mixed_precision.global_policy().name)


def set_policy(policy: str) -> None:
    """Keras' global dtype policy: every model built from now on computes in it."""
    import keras

    keras.mixed_precision.set_global_policy(policy)


def gpus() -> tuple[list[str], list[tuple[int, int]]]:
    """The names and compute capabilities of the GPUs TensorFlow sees."""
    quiet_tensorflow()
    import tensorflow as tf

    names, capabilities = [], []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        names.append(str(details.get("device_name", device.name)))
        capabilities.append(tuple(details.get("compute_capability", (0, 0))))
    return names, capabilities


def local_precision(requested: str = "auto") -> Precision:
    """choose_precision for this machine's GPUs, or its CPU when it has none."""
    return choose_precision(requested, gpus()[1], this_cpu_flags())


def configure(seed: int, precision: str = "auto") -> Runtime:
    """Seeds everything, then picks precision, XLA and strategy for the devices present."""
    quiet_tensorflow()
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    names, capabilities = gpus()
    chosen = choose_precision(precision, capabilities, this_cpu_flags())
    set_policy(chosen.policy)
    strategy = tf.distribute.MirroredStrategy() if len(names) > 1 else tf.distribute.get_strategy()
    return Runtime(strategy, names, chosen, jit_compile=len(names) == 1)
