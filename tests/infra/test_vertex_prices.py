"""Vertex AI training prices: only published figures, None for the rest, priced per strategy."""

from __future__ import annotations

import pytest

from kgg.infra import vertex_prices
from kgg.infra.vertex_prices import VertexPrice, vertex_usd_per_hour


def test_a_published_machine_price_is_used_as_published() -> None:
    assert vertex_usd_per_hour("n1-standard-4", None, 0, "standard") == 0.21849885


def test_any_missing_price_makes_the_whole_price_unknown() -> None:
    # n1-standard-4 is priced, the T4 is not: no partial sum passed off as the price.
    assert vertex_usd_per_hour("n1-standard-4", "NVIDIA_TESLA_T4", 1, "standard") is None
    # The H100 is priced, its a3 machine is not.
    assert vertex_usd_per_hour("a3-highgpu-1g", "NVIDIA_H100_80GB", 1, "standard") is None
    assert vertex_usd_per_hour("n1-highmem-4", None, 0, "standard") is None


def test_spot_and_flex_start_are_not_the_standard_price() -> None:
    """No source gave them: unknown, not the on-demand figure."""
    assert vertex_usd_per_hour("n1-standard-4", None, 0, "spot") is None
    assert vertex_usd_per_hour("n1-standard-4", None, 0, "flex-start") is None


def test_machine_plus_each_gpu_under_its_strategy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vertex_prices, "VERTEX_MACHINE_PRICES",
                        {"n1-highmem-4": VertexPrice(0.30, spot=0.10)})  # fmt: skip
    monkeypatch.setattr(vertex_prices, "VERTEX_GPU_PRICES",
                        {"NVIDIA_TESLA_T4": VertexPrice(0.40, spot=0.15)})  # fmt: skip
    assert vertex_usd_per_hour("n1-highmem-4", "NVIDIA_TESLA_T4", 2, "standard") == (
        pytest.approx(0.30 + 2 * 0.40)
    )
    assert vertex_usd_per_hour("n1-highmem-4", "NVIDIA_TESLA_T4", 1, "spot") == (
        pytest.approx(0.25)
    )
    assert vertex_usd_per_hour("n1-highmem-4", "NVIDIA_TESLA_T4", 1, "flex-start") is None


def test_an_unknown_strategy_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="strategy 'cheap' is not one of standard, spot"):
        vertex_usd_per_hour("n1-standard-4", None, 0, "cheap")


def test_every_price_is_positive_and_every_gpu_is_a_vertex_accelerator() -> None:
    from kgg.cli.vertex_spec import VERTEX_ACCELERATORS

    for table in (vertex_prices.VERTEX_MACHINE_PRICES, vertex_prices.VERTEX_GPU_PRICES):
        for name, price in table.items():
            known = [p for p in (price.standard, price.spot, price.flex_start) if p is not None]
            assert known and all(p > 0 for p in known), name
    assert set(vertex_prices.VERTEX_GPU_PRICES) <= set(VERTEX_ACCELERATORS.values())
