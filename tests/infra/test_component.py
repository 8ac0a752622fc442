"""The resources `pulumi up` creates, checked through Pulumi mocks; failures name the URN."""

from __future__ import annotations

import json

import pulumi
import pytest

from infra import specs
from infra.password import jupyter_password_hash
from tests.infra.harness import CANARY_PASSWORD, FAKE_IP, FAKE_PROJECT_NUMBER, MY_RANGE, build


def _check(resource: pulumi.Resource, *values, check):
    return pulumi.Output.all(resource.urn, *values).apply(lambda args: check(args[0], *args[1:]))


@pulumi.runtime.test
def test_vm_stops_for_host_maintenance(tmp_path):
    notebook, _, _ = build(tmp_path)

    def check(urn, scheduling):
        assert scheduling["on_host_maintenance"] == "TERMINATE", urn
        assert scheduling["provisioning_model"] == "STANDARD", urn

    return _check(notebook.instance, notebook.instance.scheduling, check=check)


@pulumi.runtime.test
def test_spot_vm_is_spot_preemptible_and_stops_when_preempted(tmp_path):
    notebook, _, _ = build(tmp_path, {"spot": True})

    def check(urn, scheduling):
        assert scheduling == {
            "on_host_maintenance": "TERMINATE",
            "provisioning_model": "SPOT",
            "preemptible": True,
            "automatic_restart": False,
            "instance_termination_action": "STOP",
        }, urn

    return _check(notebook.instance, notebook.instance.scheduling, check=check)


@pulumi.runtime.test
def test_n1_vm_gets_the_gpus_as_guest_accelerators(tmp_path):
    notebook, _, _ = build(tmp_path, {"gpuCount": 2})

    def check(urn, machine_type, accelerators):
        assert machine_type == "n1-highmem-4", urn
        assert accelerators == [{"type": "nvidia-tesla-t4", "count": 2}], urn

    return _check(
        notebook.instance,
        notebook.instance.machine_type,
        notebook.instance.guest_accelerators,
        check=check,
    )


@pulumi.runtime.test
def test_g2_vm_brings_its_l4_without_guest_accelerators(tmp_path):
    notebook, _, _ = build(tmp_path, {"gpuType": "nvidia-l4"})

    def check(urn, machine_type, accelerators):
        assert machine_type == "g2-standard-4", urn
        assert not accelerators, urn

    return _check(
        notebook.instance,
        notebook.instance.machine_type,
        notebook.instance.guest_accelerators,
        check=check,
    )


def test_vm_is_deleted_before_its_replacement_is_created(tmp_path, monkeypatch):
    # A replacement needs the static IP the old VM holds (and its GPU quota). delete_before_replace
    # is a resource option, which mocks do not echo back: watch it being passed.
    import pulumi_gcp as gcp

    options = {}

    class WatchedInstance(gcp.compute.Instance):
        def __init__(self, name, *args, opts=None, **kwargs):
            options[name] = opts.delete_before_replace
            super().__init__(name, *args, opts=opts, **kwargs)

    monkeypatch.setattr(gcp.compute, "Instance", WatchedInstance)
    build(tmp_path, {"spot": True})
    assert options == {"kg-vm": True}


@pulumi.runtime.test
def test_boot_disk_carries_the_stack_labels(tmp_path):
    notebook, _, _ = build(tmp_path, {"labels": {"team": "vision"}})

    def check(urn, disk):
        expected = {"team": "vision", "app": "keras-gpu-gcp", "stack": "dev"}
        assert disk["initialize_params"]["labels"] == expected, urn

    return _check(notebook.instance, notebook.instance.boot_disk, check=check)


@pulumi.runtime.test
def test_vm_uses_the_static_ip(tmp_path):
    notebook, _, _ = build(tmp_path)

    def check(urn, interfaces):
        assert interfaces[0]["access_configs"][0]["nat_ip"] == FAKE_IP, urn

    return _check(notebook.instance, notebook.instance.network_interfaces, check=check)


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
        notebook.instance.urn,
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

    def check(urn, bucket_name, email, _instance_urn):
        bucket_grants = mocks.of_type("gcp:storage/bucketIAMMember:BucketIAMMember")
        assert [
            (g.inputs["bucket"], g.inputs["role"], g.inputs["member"]) for g in bucket_grants
        ] == [(bucket_name, "roles/storage.objectAdmin", f"serviceAccount:{email}")], urn
        assert not mocks.of_type("gcp:storage/bucketIAMBinding:BucketIAMBinding"), urn

    return _check(
        notebook.service_account,
        notebook.bucket.name,
        notebook.service_account.email,
        notebook.instance.urn,  # the VM waits for every grant
        check=check,
    )


@pulumi.runtime.test
def test_service_account_gets_only_the_project_roles_the_vm_uses(tmp_path):
    notebook, _, mocks = build(tmp_path)

    def check(urn, _instance_urn):
        grants = mocks.of_type("gcp:projects/iAMMember:IAMMember")
        # The startup script's runner logs to Cloud Logging; nothing writes metrics.
        assert [g.inputs["role"] for g in grants] == ["roles/logging.logWriter"], urn

    return _check(notebook.service_account, notebook.instance.urn, check=check)


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
        notebook.instance,
        notebook.instance.service_account,
        notebook.service_account.email,
        check=check,
    )


@pulumi.runtime.test
def test_startup_script_goes_in_metadata_not_the_replacing_argument(tmp_path):
    notebook, _, _mocks = build(tmp_path)

    def check(urn, metadata, startup_argument):
        assert metadata["startup-script"].startswith("#!/usr/bin/env bash"), urn
        assert startup_argument is None, urn
        assert metadata["enable-oslogin"] == "TRUE", urn
        assert metadata["kgg-bucket"] == "kg-bucket-a1b2c3", urn
        assert metadata["kgg-workload-object"].startswith("code/workload-"), urn
        assert metadata["kgg-run-id"].startswith("run-"), urn
        assert "install-nvidia-driver" not in metadata, urn

    return _check(
        notebook.instance,
        notebook.instance.metadata,
        notebook.instance.metadata_startup_script,
        check=check,
    )


@pulumi.runtime.test
def test_deeplearning_image_asks_google_to_install_the_driver(tmp_path):
    notebook, _, _ = build(tmp_path, {"image": "deeplearning"})

    def check(urn, metadata, disk):
        assert metadata["install-nvidia-driver"] == "True", urn
        assert disk["initialize_params"]["image"].startswith(
            "projects/deeplearning-platform-release/"
        ), urn

    return _check(
        notebook.instance, notebook.instance.metadata, notebook.instance.boot_disk, check=check
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
        notebook.instance.urn,  # every resource registered
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
        notebook.instance,
        notebook.instance.metadata,
        notebook.password_secret.name,
        notebook.password_version.secret_data,
        check=check,
    )


@pulumi.runtime.test
def test_metadata_is_not_secret_so_preview_shows_the_startup_script_diff(tmp_path):
    notebook, _, _ = build(tmp_path)

    def check(urn, metadata_is_secret):
        assert metadata_is_secret is False, urn

    is_secret = pulumi.Output.from_input(notebook.instance.metadata.is_secret())
    return _check(notebook.instance, is_secret, check=check)


@pulumi.runtime.test
def test_canary_password_appears_in_no_resource_input_or_output(tmp_path):
    notebook, _, mocks = build(tmp_path)
    outputs = list(notebook.stack_outputs.values())

    def check(urn, *resolved):
        dumped = json.dumps([r.inputs for r in mocks.resources], default=str)
        assert mocks.resources, urn
        assert CANARY_PASSWORD not in dumped, urn
        assert CANARY_PASSWORD not in json.dumps(resolved, default=str), urn

    return _check(notebook.instance, notebook.instance.metadata, *outputs, check=check)


@pulumi.runtime.test
def test_workload_archive_is_uploaded_with_its_hash_in_metadata(tmp_path):
    notebook, _, _mocks = build(tmp_path)

    def check(urn, metadata, object_name):
        sha = metadata["kgg-workload-sha256"]
        assert object_name == f"code/workload-{sha[:16]}.tar.gz", urn
        assert (tmp_path / f"workload-{sha[:16]}.tar.gz").is_file(), urn

    return _check(
        notebook.workload, notebook.instance.metadata, notebook.workload.name, check=check
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
        assert outputs["zone"] == "us-central1-a", urn
        assert outputs["sshCommand"] == (
            f"gcloud compute ssh {outputs['instanceName']} --zone us-central1-a "
            "--project YOUR-GCP-PROJECT-ID --tunnel-through-iap"
        ), urn
        assert outputs["statusUrl"] == "gs://kg-bucket-a1b2c3/status/startup.json", urn
        assert outputs["runsUrl"] == "gs://kg-bucket-a1b2c3/runs/", urn
        assert outputs["gpu"] == "1x nvidia-tesla-t4", urn
        # n1-highmem-4 + one T4 + the static IP, on demand.
        assert outputs["estimatedHourlyUsd"] == pytest.approx(0.2366 + 0.35 + 0.005), urn

    return _check(notebook.instance, *notebook.stack_outputs.values(), check=check)


@pulumi.runtime.test
def test_labels_reach_every_labelled_resource(tmp_path):
    notebook, _, _ = build(tmp_path, {"labels": {"team": "vision"}})

    def check(urn, vm_labels, bucket_labels):
        expected = {"team": "vision", "app": "keras-gpu-gcp", "stack": "dev"}
        assert vm_labels == expected, urn
        assert bucket_labels == expected, urn

    return _check(notebook.instance, notebook.instance.labels, notebook.bucket.labels, check=check)


@pulumi.runtime.test
def test_debian_12_image_boots_with_secure_boot_off_for_the_dkms_driver(tmp_path):
    notebook, _, _ = build(tmp_path, {"image": "debian-12"})

    def check(urn, disk, shielded):
        assert disk["initialize_params"]["image"] == (
            "projects/debian-cloud/global/images/family/debian-12"
        ), urn
        assert shielded == {"enable_secure_boot": False}, urn

    return _check(
        notebook.instance,
        notebook.instance.boot_disk,
        notebook.instance.shielded_instance_config,
        check=check,
    )
