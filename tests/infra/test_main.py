"""`__main__.py`, the file `pulumi up` runs, wired end to end under mocks."""

from __future__ import annotations

import runpy

import pulumi

from kgg.infra.stack_config import PROJECT_ROOT
from tests.infra.harness import start

EXPECTED_OUTPUTS = {
    "bucketName", "bucketUrl", "externalIp", "notebookUrl", "instanceGroup", "region", "zones",
    "sshCommand", "statusUrl", "runsUrl", "workspaceUrl", "estimatedHourlyUsd", "gpu",
    "project", "stack", "dataPath", "labels", "jobsServiceAccount",
}  # fmt: skip


@pulumi.runtime.test
def test_program_exports_every_output_and_creates_each_resource_once(monkeypatch):
    exported = {}
    monkeypatch.setattr(pulumi, "export", lambda name, value: exported.setdefault(name, value))
    mocks = start({"gpuType": "nvidia-l4", "spot": True})
    program = runpy.run_path(str(PROJECT_ROOT / "__main__.py"), run_name="__main__")

    def check(notebook_url):
        assert set(exported) == EXPECTED_OUTPUTS
        assert exported["gpu"] == "1x nvidia-l4"
        assert notebook_url.startswith("https://") and notebook_url.endswith(":8888")
        created = sorted(r.type.split(":")[-1] for r in mocks.resources)
        assert created == sorted([
            "GpuNotebook", "Bucket", "BucketObject", "RandomId", "Account", "BucketIAMMember",
            "IAMMember", "Network", "Subnetwork", "Firewall", "Firewall", "Address",
            "RandomBytes", "Secret", "SecretVersion", "SecretIamMember", "InstanceTemplate",
            "RegionInstanceGroupManager", "IAMCustomRole", "IAMMember", "Account", "Workflow",
            "IAMCustomRole", "IAMMember",
            "Account", "BucketIAMMember", "IAMMember",  # the Vertex AI jobs' account
        ])  # fmt: skip

    # The last resource registered: its URN resolves once every resource exists.
    last = program["notebook"].group.urn
    return pulumi.Output.all(exported["notebookUrl"], last).apply(lambda values: check(values[0]))


@pulumi.runtime.test
def test_stack_made_with_only_gcp_zone_still_runs_the_whole_program(monkeypatch):
    # Stacks from before `zones` set gcp:zone and nothing else: one zone, same program.
    exported = {}
    monkeypatch.setattr(pulumi, "export", lambda name, value: exported.setdefault(name, value))
    start({"gcp:zone": "us-central1-c"})
    program = runpy.run_path(str(PROJECT_ROOT / "__main__.py"), run_name="__main__")

    def check(zones, group_zones):
        assert zones == ["us-central1-c"]
        assert group_zones == ["us-central1-c"]

    group = program["notebook"].group
    return pulumi.Output.all(exported["zones"], group.distribution_policy_zones).apply(
        lambda values: check(*values)
    )
