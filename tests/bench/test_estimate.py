"""End-to-end time composed from measured rates: every term, and the GPU prices it meets."""

from __future__ import annotations

import pytest

from bench import estimate, gpu

SIZES = estimate.Sizes(train=3800, val=950, test=794)
RATES = estimate.Rates(
    decode_ips=100.0, forward_ips=5.0, guide_ips=2.0, features_ips=5.0, head_epoch_s=1.5,
    finetune_ips=4.0,
)  # fmt: skip


def test_guide_time_is_decode_plus_epochs_of_training_and_validation_plus_evaluation():
    parts = estimate.guide_seconds(SIZES, RATES, epochs=20)
    assert parts["decode"] == pytest.approx(5544 / 100)
    assert parts["guide"] == pytest.approx(20 * (3800 / 2 + 950 / 5))
    assert parts["evaluate"] == pytest.approx((950 + 794) / 5)
    assert parts["total"] == pytest.approx(parts["decode"] + parts["guide"] + parts["evaluate"])


def test_fast_time_adds_one_feature_pass_head_epochs_and_finetune_epochs():
    parts = estimate.fast_seconds(SIZES, RATES, head_epochs=12, finetune_epochs=10)
    assert parts["features"] == pytest.approx(4750 / 5)
    assert parts["head"] == pytest.approx(18.0)
    assert parts["finetune"] == pytest.approx(10 * (3800 / 4 + 950 / 5))
    assert parts["total"] == pytest.approx(sum(v for k, v in parts.items() if k != "total"))


def test_fast_time_on_cached_maps_pays_each_view_once_and_validates_on_the_maps():
    rates = estimate.Rates(
        decode_ips=100.0, forward_ips=5.0, guide_ips=2.0, features_ips=5.0, head_epoch_s=1.5,
        finetune_ips=20.0, last_block_ips=50.0, views=2,
    )  # fmt: skip
    parts = estimate.fast_seconds(SIZES, rates, head_epochs=12, finetune_epochs=10)
    assert parts["features"] == pytest.approx((2 * 3800 + 950) / 5 + 4750 / 50)
    assert parts["finetune"] == pytest.approx(10 * (3800 / 20 + 950 / 50))
    assert parts["evaluate"] == pytest.approx((950 + 794) / 5)  # the full image model


def test_max_finetune_epochs_is_the_largest_count_that_keeps_the_speedup():
    guide = estimate.guide_seconds(SIZES, RATES, 20)["total"]
    epochs = estimate.max_finetune_epochs(SIZES, RATES, guide, head_epochs=12)
    fast = estimate.fast_seconds(SIZES, RATES, 12, epochs)["total"]
    slower = estimate.fast_seconds(SIZES, RATES, 12, epochs + 1)["total"]
    assert guide / fast >= 10 > guide / slower


def test_t4_prices_come_from_the_catalogue_for_its_default_machine():
    machine, on_demand, spot = gpu.prices("Tesla T4")
    assert machine == "n1-highmem-4"
    assert on_demand == pytest.approx(0.2366 + 0.35 + 0.005)
    assert spot == pytest.approx(0.0834 + 0.21 + 0.005)


def test_a_gpu_without_a_catalogue_price_gets_none_not_a_guess():
    assert gpu.prices("NVIDIA H100 80GB HBM3")[1] is None
    assert gpu.prices("Quadro RTX 8000") == (None, None, None)
