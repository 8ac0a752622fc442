"""Validation at preview time: every bad value gets an error that names it and the fix."""

from __future__ import annotations

import pytest

from kgg.infra.settings import SettingsError, parse_settings
from kgg.infra.stack_config import declared_defaults, settings_for_stack

GOOD = {"allowedSourceRanges": ["203.0.113.7/32"]}


def settings(**overrides):
    return settings_for_stack("dev", {**GOOD, **overrides})


def error_for(**overrides) -> str:
    with pytest.raises(SettingsError) as caught:
        settings(**overrides)
    return str(caught.value)


def test_defaults_come_from_pulumi_yaml_and_give_the_guides_machine():
    result = settings()
    assert result.gpu_type == "nvidia-tesla-t4"
    assert result.machine_type == "n1-highmem-4"
    assert result.gpu_count == 1
    assert result.notebook_port == 8888
    assert result.idle_shutdown_minutes == 60
    assert result.keep_bucket_on_destroy is True
    assert result.data_path == "data/plant-seedlings"
    assert result.region == "us-central1"


def test_pulumi_yaml_declares_every_key_with_a_description():
    import yaml

    from kgg.infra.settings import CONFIG_KEYS
    from kgg.infra.stack_config import PROJECT_ROOT

    declared = yaml.safe_load((PROJECT_ROOT / "Pulumi.yaml").read_text())["config"]
    assert set(declared) == set(CONFIG_KEYS) | {"jupyterPassword", "notifyWebhook"}
    assert all(spec.get("description") for spec in declared.values())
    assert declared["jupyterPassword"]["secret"] is True
    assert (
        declared["notifyWebhook"]["secret"] is True and "default" not in declared["notifyWebhook"]
    )
    assert "jupyterPassword" not in declared_defaults()


def test_l4_defaults_to_g2_standard_4():
    assert settings(gpuType="nvidia-l4").machine_type == "g2-standard-4"


def test_bundled_machine_type_fixes_the_gpu_count():
    assert settings(gpuType="nvidia-l4", machineType="g2-standard-24").gpus_attached == 2


def test_k80_is_refused_as_retired_with_replacements():
    message = error_for(gpuType="nvidia-tesla-k80")
    assert "'nvidia-tesla-k80'" in message
    assert "retired on GCE since 2024-05-01" in message
    assert "nvidia-tesla-t4" in message and "nvidia-l4" in message


def test_unknown_gpu_lists_the_known_ones():
    message = error_for(gpuType="nvidia-rtx-9090")
    assert "'nvidia-rtx-9090'" in message and "nvidia-tesla-t4" in message


def test_count_the_gpu_does_not_offer_is_refused():
    message = error_for(gpuCount=3)
    assert "gpuCount 3" in message and "[1, 2, 4]" in message


def test_l4_on_n1_is_refused():
    message = error_for(gpuType="nvidia-l4", machineType="n1-standard-8")
    assert "'n1-standard-8'" in message and "g2-standard-4" in message


def test_t4_on_g2_is_refused():
    message = error_for(machineType="g2-standard-8")
    assert "'g2-standard-8'" in message and "N1" in message


def test_e2_machine_with_a_gpu_is_refused():
    message = error_for(machineType="e2-standard-4")
    assert "'e2-standard-4'" in message and "cannot carry nvidia-tesla-t4" in message


def test_count_that_contradicts_a_bundled_machine_type_is_refused():
    message = error_for(gpuType="nvidia-l4", machineType="g2-standard-4", gpuCount=4)
    assert "gpuCount 4" in message and "g2-standard-48" in message


def test_zone_outside_the_region_is_refused():
    message = error_for(**{"gcp:zone": "europe-west4-a"})
    assert "'europe-west4-a'" in message and "'us-central1'" in message
    assert "pulumi config set gcp:zone us-central1-a" in message


def test_zones_default_to_every_zone_of_the_region_that_offers_the_gpu():
    assert settings().zones == ("us-central1-a", "us-central1-b", "us-central1-c", "us-central1-f")
    assert settings(gpuType="nvidia-l4").zones == (
        "us-central1-a",
        "us-central1-b",
        "us-central1-c",
    )


def test_zones_follow_the_region():
    result = settings(**{"gcp:region": "europe-west4"})
    assert result.zones == ("europe-west4-a", "europe-west4-b", "europe-west4-c")


def test_gcp_zone_alone_is_a_one_zone_list():
    assert settings(**{"gcp:zone": "us-central1-b"}).zones == ("us-central1-b",)


def test_zones_list_wins_over_gcp_zone_and_keeps_its_order_once():
    result = settings(
        zones=["us-central1-f", "us-central1-a", "us-central1-f"], **{"gcp:zone": "us-central1-b"}
    )
    assert result.zones == ("us-central1-f", "us-central1-a")


def test_zones_entry_outside_the_region_is_refused_with_the_fix():
    message = error_for(zones=["us-central1-a", "us-east1-b"])
    assert "zones entry 'us-east1-b' is not in gcp:region 'us-central1'" in message
    assert "pulumi config set --path 'zones[0]' us-central1-a" in message


def test_region_without_a_catalogue_zone_list_asks_for_zones():
    message = error_for(**{"gcp:region": "asia-east1"})
    assert "no zone list for gcp:region 'asia-east1'" in message
    assert "pulumi config set --path 'zones[0]' asia-east1-a" in message
    assert "gcloud compute accelerator-types list" in message


def test_region_without_a_catalogue_zone_list_takes_zones_given_by_hand():
    result = settings(zones=["asia-east1-c"], **{"gcp:region": "asia-east1"})
    assert result.zones == ("asia-east1-c",)
    assert result.zones_without_gpu == ()  # nothing known to warn about


def test_gpu_the_region_does_not_offer_is_refused_with_regions_that_do():
    message = error_for(gpuType="nvidia-tesla-p4", **{"gcp:region": "us-west1"})
    assert "'nvidia-tesla-p4' is not offered in gcp:region 'us-west1'" in message
    assert "pulumi config set gcp:region europe-west4" in message


def test_zone_the_catalogue_says_lacks_the_gpu_is_kept_for_a_warning():
    result = settings(**{"gcp:zone": "us-central1-d"})
    assert result.zones == ("us-central1-d",)
    assert result.zones_without_gpu == ("us-central1-d",)


def test_missing_source_ranges_shows_the_command_to_allow_my_address():
    message = error_for(allowedSourceRanges=[])
    assert "pulumi config set --path 'allowedSourceRanges[0]'" in message
    assert "/32" in message


@pytest.mark.parametrize("bad", ["10.0.0.300/32", "example.com", "10.0.0.1/33", "10.0.0.1/8"])
def test_malformed_cidrs_are_refused(bad):
    message = error_for(allowedSourceRanges=[bad])
    assert repr(bad) in message


def test_world_open_range_is_accepted_when_written():
    assert settings(allowedSourceRanges=["0.0.0.0/0"]).widely_open


@pytest.mark.parametrize("ipv6", ["2001:db8::/64", "::/0"])
def test_ipv6_ranges_are_refused_the_vm_has_no_ipv6(ipv6):
    message = error_for(allowedSourceRanges=["203.0.113.7/32", ipv6])
    assert f"{ipv6!r} is IPv6" in message
    assert "allowedSourceRanges[0]" in message


def test_ranges_that_together_cover_more_than_a_slash_8_are_widely_open():
    halves = settings(allowedSourceRanges=["0.0.0.0/1", "128.0.0.0/1"])
    assert halves.reachable_addresses == 2**32 and halves.widely_open
    assert settings(allowedSourceRanges=["10.0.0.0/8", "11.0.0.0/24"]).widely_open


def test_a_slash_8_or_overlapping_ranges_inside_it_are_not_widely_open():
    assert not settings(allowedSourceRanges=["10.0.0.0/8"]).widely_open
    assert not settings(allowedSourceRanges=["10.0.0.0/8", "10.1.0.0/16"]).widely_open


def test_bad_label_is_refused():
    message = error_for(labels={"Team": "ML"})
    assert "'Team'" in message


@pytest.mark.parametrize("value", ["ml\n", "ml\nx"])
def test_label_value_with_a_newline_is_refused(value):
    assert repr(value) in error_for(labels={"team": value})


@pytest.mark.parametrize(
    "value", ["data/x\nLD_PRELOAD=/tmp/evil.so", "data/x\n", "data/\x1b[2Jx", "data/\tx"]
)
def test_data_path_with_a_control_character_is_refused(value):
    message = error_for(dataPath=value)
    assert f"dataPath {value!r} contains a control character" in message


def test_training_arg_with_a_newline_is_refused():
    message = error_for(trainingArgs=["--recipe", "fast\nLD_PRELOAD=/tmp/evil.so"])
    assert "trainingArgs entry 'fast\\nLD_PRELOAD=/tmp/evil.so'" in message


def test_data_path_must_stay_inside_the_bucket():
    assert "dataPath" in error_for(dataPath="gs://other/data")
    assert settings(dataPath="/data/x/").data_path == "data/x"


def test_numbers_out_of_range_are_refused():
    assert "notebookPort 80" in error_for(notebookPort=80)
    assert "bootDiskSizeGb 10" in error_for(bootDiskSizeGb=10)


def test_parse_settings_reads_engine_strings():
    raw = {
        "gpuType": "nvidia-tesla-t4", "gpuCount": "2", "machineType": "", "bootDiskSizeGb": "100",
        "image": "ubuntu-2204", "spot": "true", "allowedSourceRanges": '["203.0.113.7/32"]',
        "notebookPort": "8888", "idleShutdownMinutes": "0", "shutdownAfterTraining": "false",
        "runTraining": "true", "dataPath": "data", "trainingArgs": '["--recipe", "guide"]',
        "keepBucketOnDestroy": "true", "labels": "{}", "notebookAccess": "public",
    }  # fmt: skip
    raw["zones"] = '["us-central1-c"]'
    result = parse_settings(raw, project="p", region="us-central1", zone="us-central1-b")
    assert result.zones == ("us-central1-c",)
    assert (result.gpu_count, result.spot, result.idle_shutdown_minutes) == (2, True, 0)
    assert result.training_args == ("--recipe", "guide")
