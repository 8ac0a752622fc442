"""GCE's view of the stack's VM, as the commands read it: its group, the VMs GCE made for it, their
errors and template, and the certificate fingerprint the running VM published."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from kgg.cli.capacity import GroupState, group_state, render_group
from kgg.cli.gce import Compute, GceError, GroupRef
from kgg.cli.notebook_identity import TLS_QUERY, published_fingerprint
from kgg.cli.stack import resolve_group


def group_and_compute(group_flag: str | None) -> tuple[Compute, GroupRef]:
    """The Compute API client and the group from --group or the stack."""
    group = GroupRef.parse(resolve_group(group_flag))
    return Compute.from_environment(), group


def read_group(compute: Compute, group: GroupRef) -> GroupState:
    """GCE's view of the VM's group: the group, its VMs, their errors, its template."""
    described = compute.get_group(group)
    # A group made with versions[] may leave the top-level template field out.
    versions = described.get("versions") or [{}]
    template_url = described.get("instanceTemplate") or versions[0].get("instanceTemplate")
    template = compute.get_template(str(template_url or ""))
    labels = (template.get("properties") or {}).get("labels") or {}
    stack_labels = {key: labels[key] for key in ("app", "stack") if key in labels}
    return group_state(
        described,
        compute.list_managed_instances(group),
        compute.list_errors(group),
        template,
        datetime.now(UTC),
        per_instance=compute.list_per_instance_configs(group),
        labelled=compute.labelled_instances(group.project, stack_labels) if stack_labels else [],
    )


def read_status_view(compute: Compute, group: GroupRef) -> GroupState:
    """What `status` shows of GCE: the group, and the certificate fingerprint its running VM
    published (the guest attribute only a process on the VM can write)."""
    state = read_group(compute, group)
    vm, notebook = state.running, state.notebook
    if notebook is None or notebook.url is None:
        return state
    if vm is None or not vm.name or not vm.zone:
        missing = "the VM is not running"
        return dataclasses.replace(state, notebook=dataclasses.replace(notebook, missing=missing))
    try:
        attributes = compute.guest_attributes(group.project, vm.zone, vm.name, TLS_QUERY)
    except GceError as error:
        missing = f"its guest attributes are not readable: {error}"
        return dataclasses.replace(state, notebook=dataclasses.replace(notebook, missing=missing))
    fingerprint = published_fingerprint(attributes)
    notebook = dataclasses.replace(
        notebook, tls_sha256=fingerprint, missing="" if fingerprint else "not yet"
    )
    return dataclasses.replace(state, notebook=notebook)


def running_vm(group: GroupRef, state: GroupState) -> tuple[str, str]:
    """The name and zone of the group's running VM, wherever GCE put it."""
    vm = state.running
    if vm is None or not vm.name or not vm.zone:
        raise GceError(
            f"the group {group.name} has no running VM to reach ({state.phase}); "
            "see `kgg status`, start it with `kgg start`"
        )
    return vm.name, vm.zone


def print_group(state: GroupState) -> None:
    print("\n".join(render_group(state, datetime.now(UTC))))
