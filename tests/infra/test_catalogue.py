"""The GPU catalogue and the cost estimate."""

from __future__ import annotations

import pytest

from kgg.infra.catalogue import CURRENT_GPUS, GPUS, ZONE_REGIONS, hourly_cost_usd
from kgg.infra.specs import service_account_id
from kgg.infra.stack_config import settings_for_stack


def test_catalogue_has_every_gpu_the_guide_and_users_need():
    assert set(GPUS) == {
        "nvidia-tesla-k80", "nvidia-tesla-t4", "nvidia-tesla-p4", "nvidia-tesla-p100",
        "nvidia-tesla-v100", "nvidia-l4", "nvidia-tesla-a100", "nvidia-a100-80gb",
        "nvidia-h100-80gb",
    }  # fmt: skip
    assert "nvidia-tesla-k80" not in CURRENT_GPUS


def test_only_the_k80_is_retired_and_it_needs_an_old_driver():
    retired = {name: spec.retired for name, spec in GPUS.items() if spec.retired}
    assert retired == {"nvidia-tesla-k80": "2024-05-01"}
    assert GPUS["nvidia-tesla-k80"].driver_branch == "470"


def test_current_gpus_use_one_driver_branch_and_current_tensorflow():
    for name in CURRENT_GPUS:
        assert GPUS[name].driver_branch == "580", name
        assert GPUS[name].compute_capability >= 6.0, name


def test_mixed_precision_only_from_compute_capability_7():
    assert GPUS["nvidia-tesla-t4"].mixed_precision
    assert GPUS["nvidia-tesla-v100"].mixed_precision
    assert not GPUS["nvidia-tesla-p100"].mixed_precision


def test_default_machine_types_fit_their_gpu():
    for spec in GPUS.values():
        assert spec.fits_machine_type(spec.default_machine_type), spec.accelerator


def test_t4_cost_on_demand_and_spot():
    t4 = GPUS["nvidia-tesla-t4"]
    assert hourly_cost_usd(t4, "n1-highmem-4", 1, spot=False) == pytest.approx(0.5916)
    assert hourly_cost_usd(t4, "n1-highmem-4", 2, spot=True) == pytest.approx(
        0.0834 + 2 * 0.21 + 0.005
    )


def test_g2_price_already_includes_its_l4():
    settings = settings_for_stack("dev", {"allowedSourceRanges": ["1.2.3.4/32"],
                                          "gpuType": "nvidia-l4", "spot": True})  # fmt: skip
    assert settings.estimated_hourly_usd == pytest.approx(0.3973 + 0.005)


def test_unknown_price_gives_no_estimate_rather_than_a_guess():
    assert hourly_cost_usd(GPUS["nvidia-tesla-v100"], "n1-highmem-8", 1, spot=False) is None


@pytest.mark.parametrize("stack", ["dev", "Production.Stack_With-A-Very-Long-Name", "x"])
def test_service_account_id_is_valid_for_any_stack(stack):
    import re

    account = service_account_id(stack, "0a1b2c")
    assert re.fullmatch(r"[a-z][a-z0-9-]{4,28}[a-z0-9]", account), account


@pytest.mark.parametrize("gpu", CURRENT_GPUS)
def test_every_current_gpu_has_zones_in_the_default_region(gpu):
    # Pulumi.dev.yaml and the README use us-central1: its default must never be empty.
    assert GPUS[gpu].zones_in("us-central1")


@pytest.mark.parametrize("gpu", list(GPUS))
def test_catalogue_zones_belong_to_their_region_and_to_known_regions(gpu):
    for region, zones in GPUS[gpu].zones.items():
        assert region in ZONE_REGIONS, (gpu, region)
        assert zones and all(zone.startswith(f"{region}-") for zone in zones), (gpu, region)


def test_region_outside_the_catalogue_has_no_zone_list():
    assert GPUS["nvidia-tesla-t4"].zones_in("asia-east1") is None
    assert GPUS["nvidia-tesla-p4"].zones_in("us-west1") == ()
