"""The resources `pulumi up` creates, checked through Pulumi mocks; failures name the URN."""

from __future__ import annotations

import json

import pulumi
import pytest

from kgg.infra import specs
from kgg.infra.password import jupyter_password_hash
from tests.infra.harness import CANARY_PASSWORD, FAKE_IP, FAKE_PROJECT_NUMBER, MY_RANGE, build


def _check(resource: pulumi.Resource, *values, check):
    return pulumi.Output.all(resource.urn, *values).apply(lambda args: check(args[0], *args[1:]))


@pulumi.runtime.test
def test_vm_stops_for_host_maintenance(tmp_path):
    notebook, _, _ = build(tmp_path)

    def check(urn, scheduling):
        assert scheduling["on_host_maintenance"] == "TERMINATE", urn
        assert scheduling["provisioning_model"] == "STANDARD", urn

    return _check(notebook.template, notebook.template.scheduling, check=check)


@pulumi.runtime.test
def test_spot_vm_is_deleted_when_preempted_so_its_group_recreates_it(tmp_path):
    notebook, _, _ = build(tmp_path, {"spot": True})

    def check(urn, scheduling):
        assert scheduling == {
            "on_host_maintenance": "TERMINATE",
            "provisioning_model": "SPOT",
            "preemptible": True,
            "automatic_restart": False,
            "instance_termination_action": "DELETE",
        }, urn

    return _check(notebook.template, notebook.template.scheduling, check=check)


@pulumi.runtime.test
def test_n1_vm_gets_the_gpus_as_guest_accelerators(tmp_path):
    notebook, _, _ = build(tmp_path, {"gpuCount": 2})

    def check(urn, machine_type, accelerators):
        assert machine_type == "n1-highmem-4", urn
        assert accelerators == [{"type": "nvidia-tesla-t4", "count": 2}], urn

    return _check(
        notebook.template,
        notebook.template.machine_type,
        notebook.template.guest_accelerators,
        check=check,
    )


@pulumi.runtime.test
def test_g2_vm_brings_its_l4_without_guest_accelerators(tmp_path):
    notebook, _, _ = build(tmp_path, {"gpuType": "nvidia-l4"})

    def check(urn, machine_type, accelerators):
        assert machine_type == "g2-standard-4", urn
        assert not accelerators, urn

    return _check(
        notebook.template,
        notebook.template.machine_type,
        notebook.template.guest_accelerators,
        check=check,
    )


def _group_options(tmp_path, monkeypatch, overrides=None) -> dict:
    """The group's resource options (mocks do not echo options back: watch them being passed)."""
    import pulumi_gcp as gcp

    options = {}

    class WatchedGroup(gcp.compute.RegionInstanceGroupManager):
        def __init__(self, resource_name, *args, opts=None, **kwargs):
            options[resource_name] = opts
            super().__init__(resource_name, *args, opts=opts, **kwargs)

    monkeypatch.setattr(gcp.compute, "RegionInstanceGroupManager", WatchedGroup)
    build(tmp_path, overrides)
    return options


@pulumi.runtime.test
def test_group_replaces_its_vm_by_deleting_it_first(tmp_path):
    # A second VM next to the first would need the static IP and the GPU quota the first holds.
    notebook, _, _ = build(tmp_path, {"spot": True})

    def check(urn, policy):
        assert policy["replacement_method"] == "RECREATE", urn
        assert policy["max_surge_fixed"] == 0, urn
        # Metadata changes (new code, new startup script) apply in place, like before.
        assert policy["minimal_action"] == "REFRESH", urn
        assert policy["most_disruptive_allowed_action"] == "REPLACE", urn

    return _check(notebook.group, notebook.group.update_policy, check=check)


def test_group_is_deleted_before_its_replacement_is_created(tmp_path, monkeypatch):
    options = _group_options(tmp_path, monkeypatch, {"spot": True})
    assert list(options) == ["kg-group"]
    assert options["kg-group"].delete_before_replace is True


def test_group_size_is_left_to_the_vm_and_the_laptop_commands(tmp_path, monkeypatch):
    # Idle shutdown resizes the group to 0; `pulumi up` must not start the VM again.
    options = _group_options(tmp_path, monkeypatch)
    assert options["kg-group"].ignore_changes == ["targetSize"]


@pulumi.runtime.test
def test_boot_disk_carries_the_stack_labels_and_goes_with_its_vm(tmp_path):
    notebook, _, _ = build(tmp_path, {"labels": {"team": "vision"}})

    def check(urn, disks):
        expected = {"team": "vision", "app": "keras-gpu-gcp", "stack": "dev"}
        (disk,) = disks
        assert disk["labels"] == expected, urn
        assert disk["boot"] is True and disk["auto_delete"] is True, urn

    return _check(notebook.template, notebook.template.disks, check=check)


@pulumi.runtime.test
def test_every_vm_of_the_group_gets_the_regional_static_ip(tmp_path):
    notebook, _, mocks = build(tmp_path)

    def check(urn, interfaces, address_region, group_region):
        assert interfaces[0]["access_configs"] == [
            {"nat_ip": FAKE_IP, "network_tier": "PREMIUM"}
        ], urn
        # A regional address serves any zone of its region: the URL follows the VM.
        assert address_region == group_region == "us-central1", urn
        (address,) = mocks.of_type("gcp:compute/address:Address")
        assert address.inputs["addressType"] == "EXTERNAL", urn

    return _check(
        notebook.template,
        notebook.template.network_interfaces,
        notebook.address.region,
        notebook.group.region,
        check=check,
    )


@pulumi.runtime.test
def test_group_spreads_over_the_catalogue_zones_with_the_any_shape(tmp_path):
    notebook, _, _ = build(tmp_path)
    group = notebook.group

    def check(urn, zones, shape, policy):
        assert zones == ["us-central1-a", "us-central1-b", "us-central1-c", "us-central1-f"], urn
        assert shape == "ANY", urn
        assert policy["instance_redistribution_type"] == "NONE", urn
        # RECREATE needs maxUnavailable above 0: one per zone, as gcloud defaults a regional group.
        assert policy["max_unavailable_fixed"] == 4, urn

    return _check(
        group,
        group.distribution_policy_zones,
        group.distribution_policy_target_shape,
        group.update_policy,
        check=check,
    )


@pulumi.runtime.test
def test_group_creates_one_vm_and_pulumi_never_waits_for_it(tmp_path):
    notebook, _, _ = build(tmp_path)
    group = notebook.group

    def check(urn, size, wait, name, base_name, versions, template_link):
        assert size == 1, urn
        assert wait is False, urn  # a stocked-out GPU does not hold `pulumi up`
        assert name == base_name and name.startswith("kgg-dev-"), urn
        assert versions == [{"name": "primary", "instance_template": template_link}], urn

    return _check(
        group,
        group.target_size,
        group.wait_for_instances,
        group.name,
        group.base_instance_name,
        group.versions,
        notebook.template.self_link_unique,
        check=check,
    )


@pulumi.runtime.test
def test_group_recreates_a_missing_vm_in_any_zone_from_the_current_template(tmp_path):
    notebook, _, _ = build(tmp_path, {"spot": True})

    def check(urn, lifecycle, stateful_disks, stateful_ips):
        assert lifecycle == {
            "default_action_on_failure": "REPAIR",
            "force_update_on_repair": "YES",
            "on_repair": {"allow_changing_zone": "YES"},
        }, urn
        # Repairs in another zone refuse stateful groups: nothing may pin the VM to a zone.
        assert not stateful_disks and not stateful_ips, urn

    group = notebook.group
    return _check(
        group,
        group.instance_lifecycle_policy,
        group.stateful_disks,
        group.stateful_external_ips,
        check=check,
    )


@pulumi.runtime.test
def test_gcp_zone_only_stack_still_previews_as_a_one_zone_group(tmp_path):
    notebook, settings, _ = build(tmp_path, {"gcp:zone": "us-central1-b"})

    def check(urn, zones, policy):
        assert settings.zones == ("us-central1-b",), urn
        assert zones == ["us-central1-b"], urn
        assert policy["max_unavailable_fixed"] == 1, urn

    group = notebook.group
    return _check(group, group.distribution_policy_zones, group.update_policy, check=check)


@pulumi.runtime.test
def test_only_the_stop_workflows_account_may_resize_the_group_and_only_that_one(tmp_path):
    notebook, _, mocks = build(tmp_path)

    def check(urn, group_path, vm_email, stopper_email, role_name, workflow_path, metadata):
        (role,) = [
            r for r in mocks.of_type("gcp:projects/iAMCustomRole:IAMCustomRole")
            if r.outputs["name"] == role_name
        ]  # fmt: skip
        assert role.inputs["permissions"] == list(specs.STOPPER_PERMISSIONS), urn
        grants = [
            g for g in mocks.of_type("gcp:projects/iAMMember:IAMMember")
            if g.inputs["role"] == role_name
        ]  # fmt: skip
        assert [(g.inputs["member"], g.inputs["condition"]["expression"]) for g in grants] == [
            (f"serviceAccount:{stopper_email}", f'resource.name == "{group_path}"')
        ], urn
        assert group_path == (
            "projects/YOUR-GCP-PROJECT-ID/regions/us-central1/instanceGroupManagers/"
            f"{vm_email.split('@')[0]}"
        ), urn
        (workflow,) = mocks.of_type("gcp:workflows/workflow:Workflow")
        assert workflow.inputs["serviceAccount"] == stopper_email, urn
        assert f"url: {specs.COMPUTE_API}/{group_path}/resize" in workflow.inputs["sourceContents"]
        assert metadata[specs.STOP_WORKFLOW_KEY] == workflow_path, urn
        assert workflow_path.endswith(f"/locations/us-central1/workflows/{workflow.inputs['name']}")

    return _check(
        notebook.group, notebook.group_path, notebook.service_account.email,
        notebook.stopper.email, notebook.group_resize_role.name, notebook.stop_workflow_path,
        notebook.template.metadata, check=check,
    )  # fmt: skip


@pulumi.runtime.test
def test_workspace_lives_in_the_bucket_not_on_a_disk_that_pins_a_zone(tmp_path):
    notebook, _, _ = build(tmp_path)

    def check(urn, metadata, disks, workspace_url, bucket):
        assert metadata["kgg-workspace-prefix"] == "workspace/", urn
        assert workspace_url == f"gs://{bucket}/workspace/", urn
        assert [d["boot"] for d in disks] == [True], urn  # no data disk, zonal or regional

    return _check(
        notebook.template,
        notebook.template.metadata,
        notebook.template.disks,
        notebook.stack_outputs["workspaceUrl"],
        notebook.bucket.name,
        check=check,
    )


@pulumi.runtime.test
def test_metadata_names_the_vms_own_group_and_region(tmp_path):
    notebook, _, _ = build(tmp_path, {"gcp:region": "europe-west4"})

    def check(urn, metadata, group_name):
        assert metadata["kgg-instance-group"] == group_name, urn
        assert metadata["kgg-instance-group-region"] == "europe-west4", urn

    return _check(notebook.template, notebook.template.metadata, notebook.group.name, check=check)


@pulumi.runtime.test
def test_firewall_opens_only_the_notebook_port_to_allowed_ranges(tmp_path):
    notebook, _, _ = build(tmp_path, {"notebookPort": 9443})
    rule = notebook.notebook_firewall

    def check(urn, sources, allows, tags, direction):
        assert sources == [MY_RANGE], urn
        assert allows == [{"protocol": "tcp", "ports": ["9443"]}], urn
        assert tags == [specs.NETWORK_TAG], urn
        assert direction == "INGRESS", urn

    return _check(
        rule, rule.source_ranges, rule.allows, rule.target_tags, rule.direction, check=check
    )


@pulumi.runtime.test
def test_ssh_is_open_only_to_the_iap_range(tmp_path):
    notebook, _, _ = build(tmp_path)
    rule = notebook.ssh_firewall

    def check(urn, sources, allows):
        assert sources == ["35.235.240.0/20"], urn
        assert allows == [{"protocol": "tcp", "ports": ["22"]}], urn

    return _check(rule, rule.source_ranges, rule.allows, check=check)


@pulumi.runtime.test
def test_only_the_two_firewall_rules_exist_on_a_network_of_its_own(tmp_path):
    notebook, _, mocks = build(tmp_path)

    def check(urn, auto_subnets, *_registered):
        rules = mocks.of_type("gcp:compute/firewall:Firewall")
        assert sorted(r.name for r in rules) == ["kg-iap-ssh", "kg-notebook"], urn
        assert auto_subnets is False, urn  # a custom network: no default allow rules

    return _check(
        notebook.network,
        notebook.network.auto_create_subnetworks,
        notebook.notebook_firewall.urn,
        notebook.ssh_firewall.urn,
        notebook.group.urn,
        check=check,
    )


@pulumi.runtime.test
def test_bucket_is_private_versioned_and_uniform(tmp_path):
    notebook, _, _ = build(tmp_path)
    bucket = notebook.bucket

    def check(urn, ubla, pap, versioning, location, force_destroy):
        assert ubla is True, urn
        assert pap == "enforced", urn
        assert versioning == {"enabled": True}, urn
        assert location == "US-CENTRAL1", urn
        assert force_destroy is False, urn

    return _check(
        bucket,
        bucket.uniform_bucket_level_access,
        bucket.public_access_prevention,
        bucket.versioning,
        bucket.location,
        bucket.force_destroy,
        check=check,
    )


@pulumi.runtime.test
def test_bucket_is_force_destroyed_only_when_not_kept(tmp_path):
    notebook, _, _ = build(tmp_path, {"keepBucketOnDestroy": False})

    def check(urn, force_destroy):
        assert force_destroy is True, urn

    return _check(notebook.bucket, notebook.bucket.force_destroy, check=check)


@pytest.mark.parametrize("keep", [True, False])
def test_bucket_is_retained_on_destroy_only_when_kept(tmp_path, monkeypatch, keep):
    # retain_on_delete is a resource option, which mocks do not echo back: watch it being passed.
    import pulumi_gcp as gcp

    retained = {}

    class WatchedBucket(gcp.storage.Bucket):
        def __init__(self, name, *args, opts=None, **kwargs):
            retained[name] = opts.retain_on_delete
            super().__init__(name, *args, opts=opts, **kwargs)

    monkeypatch.setattr(gcp.storage, "Bucket", WatchedBucket)
    build(tmp_path, {"keepBucketOnDestroy": keep})
    assert retained == {"kg-bucket": keep}


@pulumi.runtime.test
def test_service_account_gets_object_admin_on_this_bucket_only(tmp_path):
    notebook, _, mocks = build(tmp_path)

    def check(urn, bucket_name, email, jobs_email, *_waited):
        bucket_grants = mocks.of_type("gcp:storage/bucketIAMMember:BucketIAMMember")
        # The VM's account and the Vertex AI jobs' account, each on this bucket only. Sorted: the
        # mocks see the two grants in whichever order their inputs resolve.
        assert sorted(
            (g.inputs["bucket"], g.inputs["role"], g.inputs["member"]) for g in bucket_grants
        ) == sorted(
            [
                (bucket_name, "roles/storage.objectAdmin", f"serviceAccount:{email}"),
                (bucket_name, "roles/storage.objectAdmin", f"serviceAccount:{jobs_email}"),
            ]
        ), urn
        assert not mocks.of_type("gcp:storage/bucketIAMBinding:BucketIAMBinding"), urn

    return _check(
        notebook.service_account,
        notebook.bucket.name,
        notebook.service_account.email,
        notebook.jobs_account.email,
        notebook.group.urn,  # the VM waits for every grant
        *(grant.urn for grant in notebook.jobs_grants),
        check=check,
    )


@pulumi.runtime.test
def test_service_account_gets_only_the_project_roles_the_vm_uses(tmp_path):
    notebook, _, mocks = build(tmp_path)

    def check(urn, email, invoke_role, _grant_urn):
        grants = [
            g for g in mocks.of_type("gcp:projects/iAMMember:IAMMember")
            if g.inputs["member"] == f"serviceAccount:{email}"
        ]  # fmt: skip
        # The startup script's runner logs to Cloud Logging; nothing writes metrics. The invoke
        # role is held only on the stop workflow (tests/infra/test_grants.py).
        assert sorted(g.inputs["role"] for g in grants) == sorted(
            ["roles/logging.logWriter", invoke_role]
        ), urn
        unconditioned = [g.inputs["role"] for g in grants if not g.inputs.get("condition")]
        assert unconditioned == ["roles/logging.logWriter"], urn

    return _check(
        notebook.service_account,
        notebook.service_account.email,
        notebook.stop_invoke_role.name,
        notebook.stop_invoke_grant.urn,
        check=check,
    )


@pulumi.runtime.test
def test_two_dev_stacks_in_one_project_get_different_service_accounts(tmp_path):
    first, _, first_mocks = build(tmp_path / "a")
    second, _, _ = build(tmp_path / "b")

    def check(urn, first_id, second_id):
        assert first_id != second_id, urn
        assert first_id.startswith("kgg-dev-") and second_id.startswith("kgg-dev-"), urn
        # No keepers: nothing but a new stack (or a lost state) draws a new suffix.
        suffixes = first_mocks.of_type("random:index/randomId:RandomId")
        assert [r.inputs.get("keepers") for r in suffixes] == [None], urn

    return _check(
        first.service_account,
        first.service_account.account_id,
        second.service_account.account_id,
        check=check,
    )


@pulumi.runtime.test
def test_vm_runs_as_its_own_service_account_never_the_default(tmp_path):
    notebook, _, _ = build(tmp_path)

    def check(urn, account, email):
        assert account["email"] == email, urn
        assert "compute@developer" not in email, urn

    return _check(
        notebook.template,
        notebook.template.service_account,
        notebook.service_account.email,
        check=check,
    )


@pulumi.runtime.test
def test_startup_script_goes_in_metadata_not_the_replacing_argument(tmp_path):
    notebook, _, _mocks = build(tmp_path)

    def check(urn, metadata):
        assert metadata["startup-script"].startswith("#!/usr/bin/env bash"), urn
        assert metadata["enable-oslogin"] == "TRUE", urn
        assert metadata["enable-guest-attributes"] == "TRUE", urn  # the pinned host keys
        # Where `status` finds the notebook (with the template's static IP), not the bucket.
        assert (metadata["kgg-notebook-port"], metadata["kgg-notebook-access"]) == (
            "8888", "public"
        ), urn  # fmt: skip
        assert metadata["kgg-bucket"] == "kg-bucket-a1b2c3", urn
        assert metadata["kgg-workload-object"].startswith("code/workload-"), urn
        assert metadata["kgg-run-id"].startswith("run-"), urn
        assert "install-nvidia-driver" not in metadata, urn

    return _check(notebook.template, notebook.template.metadata, check=check)


@pulumi.runtime.test
def test_deeplearning_image_asks_google_to_install_the_driver(tmp_path):
    notebook, _, _ = build(tmp_path, {"image": "deeplearning"})

    def check(urn, metadata, disk):
        assert metadata["install-nvidia-driver"] == "True", urn
        assert disk[0]["source_image"].startswith("projects/deeplearning-platform-release/"), urn

    return _check(
        notebook.template, notebook.template.metadata, notebook.template.disks, check=check
    )


@pulumi.runtime.test
def test_password_hash_is_a_secret_version_only_the_vms_account_can_read(tmp_path):
    notebook, _, mocks = build(tmp_path)
    from jupyter_server.auth.security import passwd_check

    def check(urn, secret_id, secret_name, password_hash, email, _instance_urn):
        assert secret_name == f"projects/{FAKE_PROJECT_NUMBER}/secrets/{secret_id}", urn
        assert secret_id.startswith("kgg-dev-") and secret_id.endswith("-jupyter-password"), urn
        assert password_hash.startswith("argon2:$argon2id$"), urn
        assert passwd_check(password_hash, CANARY_PASSWORD), urn
        assert not passwd_check(password_hash, CANARY_PASSWORD + "x"), urn
        # Same password and stored salt: same hash, so `pulumi up` shows no diff.
        assert password_hash == jupyter_password_hash(
            CANARY_PASSWORD, "AAECAwQFBgcICQoLDA0ODw=="
        ), urn
        (version,) = mocks.of_type("gcp:secretmanager/secretVersion:SecretVersion")
        assert version.inputs["secret"] == secret_name, urn
        access = mocks.of_type("gcp:secretmanager/secretIamMember:SecretIamMember")
        assert [(a.inputs["secretId"], a.inputs["role"], a.inputs["member"]) for a in access] == [
            (secret_name, "roles/secretmanager.secretAccessor", f"serviceAccount:{email}")
        ], urn
        project_roles = [
            g.inputs["role"] for g in mocks.of_type("gcp:projects/iAMMember:IAMMember")
        ]
        assert not [role for role in project_roles if "secretmanager" in role], urn

    secret = notebook.password_secret
    return _check(
        secret,
        secret.secret_id,
        secret.name,
        notebook.password_version.secret_data,
        notebook.service_account.email,
        notebook.group.urn,  # every resource registered
        check=check,
    )


@pulumi.runtime.test
def test_metadata_names_the_password_secret_and_holds_no_hash(tmp_path):
    notebook, _, _ = build(tmp_path)

    def check(urn, metadata, secret_name, password_hash):
        assert metadata[specs.PASSWORD_SECRET_KEY] == secret_name, urn
        assert "kgg-jupyter-password-hash" not in metadata, urn
        assert not [key for key, value in metadata.items() if password_hash in value], urn

    return _check(
        notebook.template,
        notebook.template.metadata,
        notebook.password_secret.name,
        notebook.password_version.secret_data,
        check=check,
    )


@pulumi.runtime.test
def test_metadata_is_not_secret_so_preview_shows_the_startup_script_diff(tmp_path):
    notebook, _, _ = build(tmp_path)

    def check(urn, metadata_is_secret):
        assert metadata_is_secret is False, urn

    is_secret = pulumi.Output.from_input(notebook.template.metadata.is_secret())
    return _check(notebook.template, is_secret, check=check)


@pulumi.runtime.test
def test_canary_password_appears_in_no_resource_input_or_output(tmp_path):
    notebook, _, mocks = build(tmp_path)
    outputs = list(notebook.stack_outputs.values())

    def check(urn, *resolved):
        dumped = json.dumps([r.inputs for r in mocks.resources], default=str)
        assert mocks.resources, urn
        assert CANARY_PASSWORD not in dumped, urn
        assert CANARY_PASSWORD not in json.dumps(resolved, default=str), urn

    return _check(notebook.template, notebook.template.metadata, *outputs, check=check)


@pulumi.runtime.test
def test_workload_archive_is_uploaded_with_its_hash_in_metadata(tmp_path):
    notebook, _, _mocks = build(tmp_path)

    def check(urn, metadata, object_name):
        sha = metadata["kgg-workload-sha256"]
        assert object_name == f"code/workload-{sha[:16]}.tar.gz", urn
        assert (tmp_path / f"workload-{sha[:16]}.tar.gz").is_file(), urn

    return _check(
        notebook.workload, notebook.template.metadata, notebook.workload.name, check=check
    )


@pulumi.runtime.test
def test_stack_outputs(tmp_path):
    notebook, _, _ = build(tmp_path)
    names = list(notebook.stack_outputs)

    def check(urn, *values):
        outputs = dict(zip(names, values, strict=True))
        assert outputs["bucketName"] == "kg-bucket-a1b2c3", urn
        assert outputs["bucketUrl"] == "gs://kg-bucket-a1b2c3", urn
        assert outputs["externalIp"] == FAKE_IP, urn
        assert outputs["notebookUrl"] == f"https://{FAKE_IP}:8888", urn
        assert outputs["region"] == "us-central1", urn
        assert outputs["zones"] == [
            "us-central1-a",
            "us-central1-b",
            "us-central1-c",
            "us-central1-f",
        ], urn
        assert outputs["instanceGroup"].startswith(
            "projects/YOUR-GCP-PROJECT-ID/regions/us-central1/instanceGroupManagers/kgg-dev-"
        ), urn
        # GCE picks the VM's zone and name at run time: the CLI finds them at use.
        assert outputs["sshCommand"] == "uv run kgg ssh", urn
        assert "zone" not in outputs and "instanceName" not in outputs, urn
        assert outputs["statusUrl"] == "gs://kg-bucket-a1b2c3/status/startup.json", urn
        assert outputs["runsUrl"] == "gs://kg-bucket-a1b2c3/runs/", urn
        assert outputs["gpu"] == "1x nvidia-tesla-t4", urn
        # n1-highmem-4 + one T4 + the static IP, on demand.
        assert outputs["estimatedHourlyUsd"] == pytest.approx(0.2366 + 0.35 + 0.005), urn

    return _check(notebook.group, *notebook.stack_outputs.values(), check=check)


@pulumi.runtime.test
def test_labels_reach_every_labelled_resource(tmp_path):
    notebook, _, _ = build(tmp_path, {"labels": {"team": "vision"}})

    def check(urn, vm_labels, bucket_labels):
        expected = {"team": "vision", "app": "keras-gpu-gcp", "stack": "dev"}
        # The VM also names its GPU: `kgg status` says what it waits for.
        assert vm_labels == expected | {"gpu": "nvidia-tesla-t4"}, urn
        assert bucket_labels == expected, urn

    return _check(notebook.template, notebook.template.labels, notebook.bucket.labels, check=check)


@pulumi.runtime.test
def test_debian_12_image_boots_with_secure_boot_off_for_the_dkms_driver(tmp_path):
    notebook, _, _ = build(tmp_path, {"image": "debian-12"})

    def check(urn, disks, shielded):
        assert disks[0]["source_image"] == "projects/debian-cloud/global/images/family/debian-12", (
            urn
        )
        assert shielded == {"enable_secure_boot": False}, urn

    return _check(
        notebook.template,
        notebook.template.disks,
        notebook.template.shielded_instance_config,
        check=check,
    )


@pulumi.runtime.test
def test_the_jobs_account_is_exported_with_what_kgg_submit_reads(tmp_path):
    notebook, _, mocks = build(tmp_path)

    def check(urn, email, outputs):
        assert email.endswith("-jobs@proj.iam.gserviceaccount.com"), urn
        assert outputs["jobsServiceAccount"] == email
        # kgg/cli/vertex_jobs.py's OUTPUTS, and the stack's name and labels for the job's.
        from kgg.cli.vertex_jobs import OUTPUTS

        assert set(OUTPUTS.values()) | {"stack", "labels", "dataPath"} <= set(outputs)
        roles = sorted(
            g.inputs["role"]
            for g in mocks.of_type("gcp:projects/iAMMember:IAMMember")
            if g.inputs["member"] == f"serviceAccount:{email}"
        )
        assert roles == ["roles/logging.logWriter"], urn

    return _check(
        notebook.jobs_account,
        notebook.jobs_account.email,
        pulumi.Output.all(**notebook.stack_outputs),
        *(grant.urn for grant in notebook.jobs_grants),
        check=lambda urn, email, outputs, *_: check(urn, email, outputs),
    )
