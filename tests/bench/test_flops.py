"""VGG16 FLOP counts against the published figure, and the training-step accounting."""

from __future__ import annotations

import pytest

from bench import flops


def test_vgg16_with_its_top_costs_15_5_gmacs_at_224():
    macs = sum(layer.macs for layer in flops.vgg16_layers(224, top=True))
    assert macs == pytest.approx(15.47e9, rel=0.005)


def test_vgg16_conv_base_has_13_layers_and_no_dense():
    layers = flops.vgg16_layers(224)
    assert len(layers) == 13
    assert layers[0] == flops.LayerCost("block1_conv1", 224 * 224 * 9 * 3 * 64)
    assert layers[-1].name == "block5_conv3"


def test_conv_cost_scales_with_the_square_of_the_image_size():
    small = flops.forward_flops(flops.vgg16_layers(112))
    large = flops.forward_flops(flops.vgg16_layers(224))
    assert large == 4 * small


def test_full_training_is_three_forwards_less_the_first_layers_input_gradient():
    layers = flops.vgg16_layers(224, top=True)
    forward = flops.forward_flops(layers)
    assert flops.training_flops(layers) == 3 * forward - 2 * layers[0].macs


def test_training_only_the_last_block_adds_its_weight_and_input_gradients():
    layers = flops.vgg16_layers(224)
    block5 = flops.block_layers(layers, {5})
    assert block5 == {"block5_conv1", "block5_conv2", "block5_conv3"}
    block5_macs = sum(layer.macs for layer in layers if layer.name in block5)
    first = layers[10].macs  # block5_conv1 needs no input gradient: nothing below it trains
    expected = flops.forward_flops(layers) + 2 * block5_macs + 2 * (block5_macs - first)
    assert flops.training_flops(layers, block5) == expected


def test_unknown_trainable_layer_is_refused():
    with pytest.raises(ValueError, match="fc9"):
        flops.training_flops(flops.vgg16_layers(224), {"fc9"})
