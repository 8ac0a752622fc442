"""Analytic FLOP counts of VGG16 (and the project's models built on it), per image.

A conv layer costs H_out x W_out x k x k x C_in x C_out multiply-adds (MACs); a dense layer
in x out. One MAC is 2 FLOPs. A training step adds, for each trainable layer, the weight
gradient (same MACs as its forward) and, for each layer above the first trainable one, the input
gradient (same MACs again): full training is about 3x the forward.
"""

from __future__ import annotations

from dataclasses import dataclass

# VGG16's 13 conv layers: (block, convs, channels); each block ends in a 2x2 max-pool.
# https://arxiv.org/abs/1409.1556 (configuration D)
VGG16_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))


@dataclass(frozen=True)
class LayerCost:
    name: str
    macs: int


def conv_macs(height: int, width: int, kernel: int, c_in: int, c_out: int) -> int:
    """MACs of a 'same'-padded, stride-1 conv producing height x width x c_out."""
    return height * width * kernel * kernel * c_in * c_out


def vgg16_layers(image_size: int = 224, top: bool = False, classes: int = 1000) -> list[LayerCost]:
    """The per-image MACs of each weighted VGG16 layer, named as keras.applications names them.

    `top` adds fc1 (flattened 7x7x512 -> 4096), fc2 (4096 -> 4096) and predictions (-> classes)."""
    layers = []
    size, c_in = image_size, 3
    for block, convs, channels in VGG16_BLOCKS:
        for index in range(1, convs + 1):
            layers.append(
                LayerCost(f"block{block}_conv{index}", conv_macs(size, size, 3, c_in, channels))
            )
            c_in = channels
        size //= 2
    if top:
        flat = size * size * c_in
        layers += [
            LayerCost("fc1", flat * 4096),
            LayerCost("fc2", 4096 * 4096),
            LayerCost("predictions", 4096 * classes),
        ]
    return layers


def forward_flops(layers: list[LayerCost]) -> int:
    return 2 * sum(layer.macs for layer in layers)


def training_flops(layers: list[LayerCost], trainable: set[str] | None = None) -> int:
    """Forward + backward FLOPs of one training step per image; `trainable` None means all."""
    names = [layer.name for layer in layers]
    trainable = set(names) if trainable is None else trainable
    unknown = trainable - set(names)
    if unknown:
        raise ValueError(f"trainable layers {sorted(unknown)} are not in the model {names}")
    total = forward_flops(layers)
    seen_trainable = False
    for layer in layers:
        if seen_trainable:
            total += 2 * layer.macs  # gradient w.r.t. the layer's input
        if layer.name in trainable:
            total += 2 * layer.macs  # gradient w.r.t. the layer's weights
            seen_trainable = True
    return total


def block_layers(layers: list[LayerCost], blocks: set[int]) -> set[str]:
    """Names of the conv layers in the given VGG blocks (the fast recipe unfreezes the last)."""
    return {
        layer.name for layer in layers if layer.name.split("_")[0] in {f"block{b}" for b in blocks}
    }
