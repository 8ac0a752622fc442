"""Device setup: mixed precision on Tensor Core GPUs, MirroredStrategy across several GPUs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

# Tensor Cores (fast float16 matmuls) arrived with Volta, compute capability 7.0; on a K80 (3.7)
# or P100 (6.0) mixed precision is slower. https://www.tensorflow.org/guide/mixed_precision
MIXED_PRECISION_MIN_CC = (7, 0)


@dataclass(frozen=True)
class Runtime:
    strategy: Any
    gpus: list[str]
    mixed_precision: bool

    @property
    def replicas(self) -> int:
        return int(getattr(self.strategy, "num_replicas_in_sync", 1))

    def batch(self, batch_size: int) -> int:
        """The global batch, rounded up to a multiple of the replicas.

        Keras 3 with MirroredStrategy fails when the first batch does not split evenly across
        replicas (e.g. batch 32 on 3 GPUs); rounding up keeps every full batch even."""
        return -(-batch_size // self.replicas) * self.replicas

    def describe(self) -> str:
        if not self.gpus:
            return "CPU only (float32, no distribution strategy)"
        precision = "mixed_float16" if self.mixed_precision else "float32"
        return f"{len(self.gpus)} GPU(s) {self.gpus}, {precision}, {type(self.strategy).__name__}"


def wants_mixed_precision(compute_capabilities: list[tuple[int, int]]) -> bool:
    """Mixed precision only when every GPU has Tensor Cores (and there is at least one)."""
    return bool(compute_capabilities) and all(
        cc >= MIXED_PRECISION_MIN_CC for cc in compute_capabilities
    )


def quiet_tensorflow() -> None:
    """Hides TensorFlow's C++ info logs (CUDA probing on CPUs) unless the user set a level."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def configure(seed: int) -> Runtime:
    """Seeds everything, then picks precision and strategy for the devices present."""
    quiet_tensorflow()
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    devices = tf.config.list_physical_devices("GPU")
    names, capabilities = [], []
    for device in devices:
        details = tf.config.experimental.get_device_details(device)
        names.append(str(details.get("device_name", device.name)))
        capabilities.append(tuple(details.get("compute_capability", (0, 0))))
    mixed = wants_mixed_precision(capabilities)
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    strategy = (
        tf.distribute.MirroredStrategy() if len(devices) > 1 else tf.distribute.get_strategy()
    )
    return Runtime(strategy=strategy, gpus=names, mixed_precision=mixed)
