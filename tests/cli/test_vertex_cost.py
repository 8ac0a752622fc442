"""`kgg submit` and `kgg sweep` print what the job will cost before they create it (on stderr, so
`--dry-run`'s stdout stays the body), from the catalogue's Vertex AI prices; an unknown price
says so."""

from __future__ import annotations

import json

import pytest

from kgg.cli import vertex_cost
from kgg.infra import vertex_prices
from kgg.infra.catalogue import GPUS, MACHINE_PRICES
from kgg.infra.vertex_prices import VertexPrice

from .test_vertex_commands import TARGET, kgg

PRICES = f"Vertex AI us-central1 prices of {vertex_prices.VERTEX_PRICES_CHECKED}"


def _t4_on_demand() -> float:
    """The catalogue's on-demand price of a T4 (priced there; a GPU without one says None)."""
    price = GPUS["nvidia-tesla-t4"].on_demand_usd_per_hour
    assert price is not None
    return price


@pytest.fixture
def t4_prices(monkeypatch: pytest.MonkeyPatch) -> None:
    """Round test figures for n1-highmem-4 and the T4 (the catalogue has none yet)."""
    monkeypatch.setattr(vertex_prices, "VERTEX_MACHINE_PRICES",
                        {"n1-highmem-4": VertexPrice(0.25, spot=0.10)})  # fmt: skip
    monkeypatch.setattr(vertex_prices, "VERTEX_GPU_PRICES",
                        {"NVIDIA_TESLA_T4": VertexPrice(0.50, spot=0.20)})  # fmt: skip


def test_submit_prints_the_standard_rate_and_its_most_by_the_timeout(
    t4_prices: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = kgg(capsys, "submit", *TARGET, "--dry-run", "--timeout", "6h")
    assert code == 0, err
    assert json.loads(out)["jobSpec"]  # stdout is still the body alone
    assert err == (
        f"estimate: $0.75/h for n1-highmem-4 + 1x NVIDIA_TESLA_T4, standard ({PRICES}); "
        "at most $4.50 by its 6 h timeout\n"
    )


def test_spot_uses_the_spot_prices_of_machine_and_each_gpu(
    t4_prices: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = kgg(capsys, "submit", *TARGET, "--dry-run", "--scheduling", "spot",
                       "--gpu-count", "2")  # fmt: skip
    assert code == 0, err
    assert err.startswith("estimate: $0.50/h for n1-highmem-4 + 2x NVIDIA_TESLA_T4, spot (")
    assert err.rstrip().endswith("at most $12.00 by its 24 h timeout")


def test_a_sweep_counts_every_trial_and_the_rate_while_parallel_run(
    t4_prices: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = kgg(capsys, "sweep", *TARGET, "--dry-run", "--trials", "6", "--parallel",
                         "2", "--param", "unfreeze-blocks=1..3", "--timeout", "2h")  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["maxTrialCount"] == 6
    assert err == (
        f"estimate: $0.75/h for n1-highmem-4 + 1x NVIDIA_TESLA_T4, standard ({PRICES}); a sweep "
        "of 6 trials, up to 2 at a time ($1.50/h while 2 run): at most $9.00 if each runs to its "
        "2 h timeout\n"
    )


def test_flex_start_without_a_published_price_is_unknown(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Known standard and spot prices of the L4 (flex-start's default GPU) are not flex-start's:
    Google bills it on SKUs of its own."""
    monkeypatch.setattr(vertex_prices, "VERTEX_MACHINE_PRICES",
                        {"g2-standard-4": VertexPrice(0.80, spot=0.30)})  # fmt: skip
    monkeypatch.setattr(vertex_prices, "VERTEX_GPU_PRICES",
                        {"NVIDIA_L4": VertexPrice(0.70, spot=0.25)})  # fmt: skip
    code, _, err = kgg(capsys, "submit", *TARGET, "--dry-run", "--scheduling", "flex-start")
    assert code == 0, err
    assert err.startswith("estimate: price unknown for g2-standard-4 + 1x NVIDIA_L4, "
                          "flex-start: not in the catalogue's")  # fmt: skip


def test_the_catalogues_own_prices_say_unknown_for_the_default_t4(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = kgg(capsys, "submit", *TARGET, "--dry-run")
    assert code == 0, err
    # What is known is said: Vertex charges at least Compute Engine's price for the machine.
    floor = MACHINE_PRICES["n1-highmem-4"][0] + _t4_on_demand()
    assert err == (
        "estimate: price unknown for n1-highmem-4 + 1x NVIDIA_TESLA_T4, standard: not in the "
        f"catalogue's {PRICES} (https://cloud.google.com/vertex-ai/pricing); at least "
        f"${floor:.2f}/h, Compute Engine's own price for it\n"
    )


def test_spot_and_flex_start_get_no_compute_engine_floor() -> None:
    machine = {"machineType": "n1-highmem-4", "acceleratorType": "NVIDIA_TESLA_T4",
               "acceleratorCount": 2}  # fmt: skip
    body = {"jobSpec": {"workerPoolSpecs": [{"machineSpec": machine, "replicaCount": "1"}],
                        "scheduling": {"strategy": "SPOT"}}}  # fmt: skip
    assert vertex_cost.compute_engine_floor(body) is None
    body["jobSpec"]["scheduling"] = {"strategy": "STANDARD"}
    two = MACHINE_PRICES["n1-highmem-4"][0] + 2 * _t4_on_demand()
    assert vertex_cost.compute_engine_floor(body) == pytest.approx(two)


def test_another_region_is_not_priced_with_us_central1s_figures(t4_prices: None) -> None:
    body = {"jobSpec": {"workerPoolSpecs": [{"machineSpec": {
        "machineType": "n1-highmem-4", "acceleratorType": "NVIDIA_TESLA_T4",
        "acceleratorCount": 1}, "replicaCount": "1"}]}}  # fmt: skip
    assert vertex_cost.usd_per_hour(body, "us-central1") == pytest.approx(0.75)
    assert vertex_cost.usd_per_hour(body, "europe-west4") is None
    assert "price unknown for n1-highmem-4 + 1x NVIDIA_TESLA_T4, standard in europe-west4" in (
        vertex_cost.estimate(body, "europe-west4")
    )


def test_a_cpu_pool_with_replicas_and_a_published_price() -> None:
    body = {"jobSpec": {"workerPoolSpecs": [{"machineSpec": {"machineType": "n1-standard-4"},
                                             "replicaCount": "2"}],
                        "scheduling": {"strategy": "STANDARD", "timeout": "3600s"}}}  # fmt: skip
    assert vertex_cost.usd_per_hour(body, "us-central1") == pytest.approx(2 * 0.21849885)
    assert vertex_cost.machine_text(body) == "2 x (n1-standard-4)"
    assert vertex_cost.estimate(body, "us-central1").endswith("at most $0.44 by its 1 h timeout")
