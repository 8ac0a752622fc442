"""Least privilege, proven on the program itself: every permission each identity holds, collected
from the bindings the program declares (kgg/infra/declared.py, kgg/infra/access.py), is its written
allow-list, and no identity the VM can obtain holds more."""

from __future__ import annotations

import pytest

from kgg.infra import access, declared, specs

PROJECT = "kgg-demo-project"


@pytest.fixture(scope="module")
def grants() -> access.Grants:
    resources = declared.declare(
        {"allowedSourceRanges": ["203.0.113.7/32"], "gcp:project": PROJECT,
         "notifyWebhook": "https://hooks.slack.com/services/T0/B0/x"},
        declared.Cloud(bucket="kgg-grants-bucket", suffix="0a1b2c"),
    )  # fmt: skip
    return access.from_resources(resources)


@pytest.mark.parametrize("identity", sorted(access.ALLOWED))
def test_each_identity_holds_exactly_its_allow_list(grants: access.Grants, identity: str) -> None:
    held = grants.permissions_of(grants.identities[identity])
    assert sorted(held - access.ALLOWED[identity]) == [], "held beyond the allow-list"
    assert sorted(access.ALLOWED[identity] - held) == [], "allowed but no longer granted"


def test_the_program_creates_no_identity_without_an_allow_list(grants: access.Grants) -> None:
    members = {binding.member for binding in grants.bindings}
    assert members == {grants.identities[name] for name in access.ALLOWED}


def test_the_vm_can_obtain_no_other_identity(grants: access.Grants) -> None:
    vm = grants.identities[access.VM]
    assert grants.obtainable_from(vm) == {vm}
    assert not {p for p in grants.permissions_of(vm) if p.startswith("iam.")}


def test_the_vms_allow_list_changes_nothing_that_runs_on_it() -> None:
    """No instance or project metadata, template, group, per-instance config, abandon or
    recreate, nor acting as another account: the worst a notebook user can do is stop the VM."""
    allowed = access.ALLOWED[access.VM]
    assert not {p for p in allowed if p.startswith(("compute.", "iam.", "workflows.workflows."))}
    assert not allowed & access.IMPERSONATION
    assert {p for p in allowed if p.startswith("workflows.")} == set(specs.STOP_INVOKE_PERMISSIONS)


def test_the_vm_may_start_only_its_own_stop_workflow(grants: access.Grants) -> None:
    vm = grants.identities[access.VM]
    (workflow,) = grants.workflows
    assert (
        workflow.name == f"projects/{PROJECT}/locations/us-central1/workflows/kgg-dev-0a1b2c-stop"
    )
    create = "workflows.executions.create"
    assert grants.allows(vm, create, workflow.name)
    assert grants.allows(vm, "workflows.executions.get", f"{workflow.name}/executions/e1")
    assert not grants.allows(vm, create, workflow.name + "-other")
    assert not grants.allows(vm, create, f"projects/{PROJECT}/locations/us-central1/workflows/x")


def test_only_the_stopper_may_update_the_group_and_only_its_own(grants: access.Grants) -> None:
    group = f"projects/{PROJECT}/regions/us-central1/instanceGroupManagers/kgg-dev-0a1b2c"
    update = "compute.instanceGroupManagers.update"
    (workflow,) = grants.workflows
    assert workflow.member == grants.identities[access.STOPPER]
    assert grants.allows(workflow.member, update, group)
    assert not grants.allows(workflow.member, update, group.replace("0a1b2c", "9z9z9z"))
    assert not grants.allows(grants.identities[access.VM], update, group)
    assert not grants.allows(
        grants.identities[access.VM], "compute.instanceGroupManagers.get", group
    )


def test_the_vm_reads_and_writes_only_its_buckets_objects(grants: access.Grants) -> None:
    vm = grants.identities[access.VM]
    bucket = "projects/_/buckets/kgg-grants-bucket"
    assert grants.allows(vm, "storage.objects.get", f"{bucket}/objects/runs/r/progress.json")
    assert grants.allows(vm, "storage.objects.list", bucket)
    assert not grants.allows(vm, "storage.buckets.get", bucket)
    assert not grants.allows(vm, "storage.objects.get", "projects/_/buckets/other/objects/x")


def test_the_secrets_are_the_vms_alone(grants: access.Grants) -> None:
    secrets = [b for b in grants.bindings if b.role == "roles/secretmanager.secretAccessor"]
    assert {b.member for b in secrets} == {grants.identities[access.VM]}
    assert {b.resource.rsplit("-", 1)[-1] for b in secrets} == {"password", "webhook"}


@pytest.mark.parametrize(
    ("expression", "resource", "holds"),
    [
        ('resource.name == "a/b"', "a/b", True),
        ('resource.name == "a/b"', "a/bc", False),
        ('resource.name != "a/b"', "a/c", True),
        ('resource.name.startsWith("a/b/") || resource.name == "a/b"', "a/b/x", True),
        ('resource.name.endsWith("/b") && resource.name.startsWith("a")', "a/b", True),
        ('(resource.name == "x") || (resource.name == "y")', "y", True),
    ],
)
def test_conditions_are_evaluated_as_cel(expression: str, resource: str, holds: bool) -> None:
    assert access.condition_holds(expression, resource) is holds


def test_a_condition_the_model_does_not_understand_is_refused_not_guessed() -> None:
    with pytest.raises(access.AccessError, match="not understood"):
        access.condition_holds('request.time < timestamp("2030-01-01T00:00:00Z")', "a")


def test_a_role_missing_from_the_table_is_refused_naming_it(grants: access.Grants) -> None:
    with pytest.raises(access.AccessError, match=r"roles/compute\.admin"):
        grants.role_permissions("roles/compute.admin")


def test_the_jobs_account_reads_and_writes_only_its_buckets_objects(grants: access.Grants) -> None:
    jobs = grants.identities[access.JOBS]
    bucket = "projects/_/buckets/kgg-grants-bucket"
    assert jobs.endswith("-jobs@proj.iam.gserviceaccount.com")
    assert grants.allows(jobs, "storage.objects.create", f"{bucket}/objects/runs/vx-1/x")
    assert not grants.allows(jobs, "storage.objects.get", "projects/_/buckets/other/objects/x")
    assert not {p for p in grants.permissions_of(jobs) if p.startswith(("iam.", "compute.",
                "secretmanager.", "workflows.", "aiplatform."))}  # fmt: skip
    assert grants.obtainable_from(jobs) == {jobs}


def test_no_identity_of_the_stack_can_act_as_the_jobs_account(grants: access.Grants) -> None:
    """Only the laptop user (the Owner, or who holds roles/iam.serviceAccountUser on it)
    starts a job as it: the VM cannot reach its permissions through Vertex AI."""
    jobs = grants.identities[access.JOBS]
    resource = f"projects/{PROJECT}/serviceAccounts/{jobs.partition(':')[2]}"
    for name in (access.VM, access.STOPPER):
        assert not grants.allows(grants.identities[name], "iam.serviceAccounts.actAs", resource)
        assert jobs not in grants.obtainable_from(grants.identities[name])
