"""Pure builders for what the Pulumi resources receive: scheduling, accelerators, firewall rules,
labels, metadata, names. Kept free of Pulumi so every rule is checked without mocks."""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING, Any

# The metadata keys are the contract's: the VM and `kgg status` read them (tests read them here).
from kgg.common.contract import (
    BUCKET_KEY,
    GROUP_NAME_KEY,
    GROUP_REGION_KEY,
    NOTEBOOK_ACCESS_KEY,
    NOTEBOOK_PORT_KEY,
    NOTIFY_SECRET_KEY,
    PASSWORD_SECRET_KEY,
    RUN_ID_KEY,
    STOP_WORKFLOW_KEY,
    WORKLOAD_OBJECT_KEY,
    WORKLOAD_SHA256_KEY,
    WORKSPACE_PREFIX,
    WORKSPACE_PREFIX_KEY,
)
from kgg.infra.catalogue import IMAGES
from kgg.infra.settings import IAP_SOURCE_RANGE, StackSettings

if TYPE_CHECKING:
    # Pulumi's own shapes, for the type checker only: the builders stay free of Pulumi at run time
    # and the checker still holds every key to what the provider takes.
    from pulumi_gcp.compute import (
        InstanceTemplateGuestAcceleratorArgsDict,
        InstanceTemplateSchedulingArgsDict,
        InstanceTemplateShieldedInstanceConfigArgsDict,
        RegionInstanceGroupManagerInstanceLifecyclePolicyArgsDict,
        RegionInstanceGroupManagerUpdatePolicyArgsDict,
    )
    from pulumi_gcp.projects import IAMMemberConditionArgsDict

# With notebookAccess iap the notebook is reached through a tunnel to the laptop's own port.
IAP_NOTEBOOK_URL = "https://localhost:{port} (through `kgg notebook`)"
NETWORK_TAG = "keras-gpu-notebook"
# The VM's own subnet in the stack's dedicated network.
SUBNET_RANGE = "10.42.0.0/24"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
# Project roles the VM's service account gets besides objectAdmin on its own bucket: the
# startup script's runner writes to Cloud Logging. Nothing on the VM writes metrics.
PROJECT_ROLES = ("roles/logging.logWriter",)
BUCKET_ROLE = "roles/storage.objectAdmin"
# On the one secret that holds the Jupyter password hash, for the VM's service account only.
SECRET_ROLE = "roles/secretmanager.secretAccessor"
# Bytes of the random suffix that keeps the stack's account and secret ids unique in a project.
ID_SUFFIX_BYTES = 3
# The VM stops itself through a Cloud Workflows workflow the program declares, which runs as an
# account of its own (the stopper) and only resizes the VM's group to 0. The stopper may read and
# update that one group (an IAM condition names it); the VM's account may only start the workflow
# and read its executions (an IAM condition names the workflow). Why: docs/ARCHITECTURE.md,
# "Why a stop workflow".
STOPPER_PERMISSIONS = (
    "compute.instanceGroupManagers.get",
    "compute.instanceGroupManagers.update",
)
STOP_INVOKE_PERMISSIONS = ("workflows.executions.create", "workflows.executions.get")
COMPUTE_API = "https://compute.googleapis.com/compute/v1"
# A regional group spreads VMs over zones with a target shape: ANY lets it create the one VM in
# whichever zone has capacity, and (unlike ANY_SINGLE_ZONE) allows repairing it in another zone.
# https://cloud.google.com/compute/docs/instance-groups/regional-mig-distribution-shape
# https://cloud.google.com/compute/docs/instance-groups/repair-vm-in-alternate-zone
TARGET_SHAPE = "ANY"
# What the laptop runs to reach the VM: the CLI finds its name and zone in GCE at use time.
SSH_COMMAND = "uv run kgg ssh"


def scheduling(settings: StackSettings) -> InstanceTemplateSchedulingArgsDict:
    """GPU VMs cannot live-migrate: they must stop for host maintenance."""
    if settings.spot:
        return {
            "on_host_maintenance": "TERMINATE",
            "provisioning_model": "SPOT",
            "preemptible": True,
            "automatic_restart": False,
            # A preempted VM is deleted and its group repairs it, in any zone with capacity;
            # the run resumes from the bucket. STOP would leave a stopped VM that still pays for
            # its disk until the repair.
            "instance_termination_action": "DELETE",
        }
    return {
        "on_host_maintenance": "TERMINATE",
        "provisioning_model": "STANDARD",
        "automatic_restart": True,
    }


def guest_accelerators(settings: StackSettings) -> list[InstanceTemplateGuestAcceleratorArgsDict]:
    """N1 machines take GPUs as guest accelerators; G2/A2/A3 bring theirs in the machine type."""
    if settings.gpu.attach == "bundled":
        return []
    return [{"type": settings.gpu_type, "count": settings.gpu_count}]


def boot_image(settings: StackSettings) -> str:
    image = IMAGES[settings.image]
    return f"projects/{image.project}/global/images/family/{image.family}"


def shielded_instance_config(
    settings: StackSettings,
) -> InstanceTemplateShieldedInstanceConfigArgsDict:
    """Secure Boot refuses the unsigned modules DKMS builds (Debian's driver); Ubuntu's
    precompiled modules are signed, so the GCE default (off) is only pinned where it matters."""
    if IMAGES[settings.image].needs_secure_boot_off:
        return {"enable_secure_boot": False}
    return {}


def labels(settings: StackSettings, stack: str) -> dict[str, str]:
    """The user's labels plus ours; ours win so cost reports can always find the stack."""
    return dict(settings.labels) | {"app": "keras-gpu-gcp", "stack": _label_value(stack)}


def vm_labels(settings: StackSettings, stack: str) -> dict[str, str]:
    """The VM's labels also name its GPU: `kgg status` reads it from the group's template
    to say what it is waiting for."""
    return labels(settings, stack) | {"gpu": settings.gpu_type}


def _label_value(text: str) -> str:
    return re.sub(r"[^a-z0-9_-]", "-", text.lower())[:63]


def service_account_id(stack: str, suffix: str) -> str:
    """A 6-30 character account id: `kgg-<stack>-<suffix>`.

    `suffix` is random and kept in the stack's state (6 hex digits): two `dev` stacks in one
    project, from two people or two backends, never collide, and one stack keeps its id."""
    stem = re.sub(r"[^a-z0-9]+", "-", stack.lower())[:19].strip("-") or "stack"
    return f"kgg-{stem}-{suffix}"


def instance_group_name(stack: str, suffix: str) -> str:
    """The VM's group (and so its VMs' base name) shares the account's stem: one name finds
    every resource of a stack."""
    return service_account_id(stack, suffix)


def instance_group_path(project: str, region: str, name: str) -> str:
    """The group's resource name, as IAM conditions and the Compute API paths spell it."""
    return f"projects/{project}/regions/{region}/instanceGroupManagers/{name}"


def group_resize_role_id(stack: str, suffix: str) -> str:
    """The stopper's custom role id (letters, digits, `_`): `kgg_<stack>_<suffix>_group_resize`."""
    return service_account_id(stack, suffix).replace("-", "_") + "_group_resize"


def stop_invoke_role_id(stack: str, suffix: str) -> str:
    """The VM's custom role id: `kgg_<stack>_<suffix>_stop_invoke`."""
    return service_account_id(stack, suffix).replace("-", "_") + "_stop_invoke"


def stopper_account_id(stack: str, suffix: str) -> str:
    """The stop workflow's account, 6-30 characters: `kgg-<stack>-<suffix>-stop`."""
    stem = re.sub(r"[^a-z0-9]+", "-", stack.lower())[:14].strip("-") or "stack"
    return f"kgg-{stem}-{suffix}-stop"


def jobs_account_id(stack: str, suffix: str) -> str:
    """The Vertex AI jobs' account (`kgg submit`, `kgg sweep`), 6-30 characters:
    `kgg-<stack>-<suffix>-jobs`."""
    stem = re.sub(r"[^a-z0-9]+", "-", stack.lower())[:14].strip("-") or "stack"
    return f"kgg-{stem}-{suffix}-jobs"


def stop_workflow_name(stack: str, suffix: str) -> str:
    return f"{instance_group_name(stack, suffix)}-stop"


def workflow_path(project: str, region: str, name: str) -> str:
    """The workflow's resource name, as IAM conditions and the Workflow Executions API spell it."""
    return f"projects/{project}/locations/{region}/workflows/{name}"


def group_resize_condition(group_path: str) -> IAMMemberConditionArgsDict:
    """Limits the stopper's grant to the one group: the condition is false for every other."""
    return {
        "title": "only the stack's VM group",
        "description": "The stop workflow resizes this group to 0 (the VM stops itself).",
        "expression": f'resource.name == "{group_path}"',
    }


def stop_invoke_condition(workflow: str) -> IAMMemberConditionArgsDict:
    """Limits the VM's grant to its stop workflow and that workflow's executions."""
    return {
        "title": "only the stack's stop workflow",
        "description": "The VM starts its stop workflow (idle shutdown) and reads the result.",
        "expression": (
            f'resource.name == "{workflow}" || resource.name.startsWith("{workflow}/executions/")'
        ),
    }


def stop_workflow_source(group_path: str) -> str:
    """The stop workflow: resize the one group to 0, or with `{"check": true}` only read it (the
    VM's boot proves its stop path is authorized without stopping). Nothing an execution's
    argument says reaches the calls but that one boolean."""
    group_url = f"{COMPUTE_API}/{group_path}"
    return f"""\
# keras-gpu-gcp: stops the stack's VM by resizing its group to 0 (the group deletes the VM).
# Argument {{"check": true}}: read the group only, to prove the stop path is authorized.
main:
  params: [args]
  steps:
    - mode:
        switch:
          - condition: ${{map.get(args, "check") == true}}
            next: check
    - stop:
        call: http.post
        args:
          url: {group_url}/resize
          query:
            size: 0
          auth:
            type: OAuth2
        result: answer
    - stopped:
        return: ${{answer.body.name}}
    - check:
        call: http.get
        args:
          url: {group_url}
          auth:
            type: OAuth2
        result: answer
    - checked:
        return: ${{answer.body.name}}
"""


def update_policy(settings: StackSettings) -> RegionInstanceGroupManagerUpdatePolicyArgsDict:
    """How a new template reaches the VM: metadata-only changes in place (REFRESH), anything else
    by recreating it (RECREATE: delete, then create); never a second VM next to the first (it
    would need the static IP and the GPU quota the first holds). RECREATE needs maxUnavailable
    above 0: the number of zones, gcloud's default for a regional group. Proactive redistribution
    off, as the non-EVEN shapes require.
    https://cloud.google.com/compute/docs/instance-groups/updating-managed-instance-groups"""
    return {
        "type": "PROACTIVE",
        "minimal_action": "REFRESH",
        "most_disruptive_allowed_action": "REPLACE",
        "replacement_method": "RECREATE",
        "max_surge_fixed": 0,
        "max_unavailable_fixed": len(settings.zones),
        "instance_redistribution_type": "NONE",
    }


def instance_lifecycle_policy() -> RegionInstanceGroupManagerInstanceLifecyclePolicyArgsDict:
    """A VM that is not running (preempted, deleted, never created for lack of capacity) is
    recreated until it exists, in another zone of the group when its own has no capacity; repairs
    use the current template. https://cloud.google.com/compute/docs/instance-groups/about-repair"""
    return {
        "default_action_on_failure": "REPAIR",
        "force_update_on_repair": "YES",
        "on_repair": {"allow_changing_zone": "YES"},
    }


def password_secret_id(stack: str, suffix: str) -> str:
    """The Secret Manager id of the Jupyter password hash, unique like the service account's."""
    return f"{service_account_id(stack, suffix)}-jupyter-password"


def notify_secret_id(stack: str, suffix: str) -> str:
    """The Secret Manager id of the notification webhook URL."""
    return f"{service_account_id(stack, suffix)}-notify-webhook"


def run_id(workload_sha256: str, settings: StackSettings) -> str:
    """Same code, data path and training args give the same run id, so a rebooted or preempted
    VM resumes its run; changing any of them starts a fresh run next to the old one."""
    key = "\n".join((workload_sha256, settings.data_path, *settings.training_args))
    return f"run-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def notebook_firewall(settings: StackSettings) -> dict[str, Any]:
    return {
        "direction": "INGRESS",
        "allows": [{"protocol": "tcp", "ports": [str(settings.notebook_port)]}],
        "source_ranges": list(settings.notebook_source_ranges),
        "target_tags": [NETWORK_TAG],
    }


def iap_ssh_firewall() -> dict[str, Any]:
    return {
        "direction": "INGRESS",
        "allows": [{"protocol": "tcp", "ports": ["22"]}],
        "source_ranges": [IAP_SOURCE_RANGE],
        "target_tags": [NETWORK_TAG],
    }


def static_metadata(settings: StackSettings, startup_script: str) -> dict[str, str]:
    """Metadata known before deployment; the program adds the cloud-assigned keys
    (kgg-bucket, kgg-workload-*, kgg-jupyter-password-secret, kgg-run-id, kgg-instance-group*,
    kgg-workspace-prefix, kgg-stop-workflow). Nothing in metadata
    is secret: every project Viewer and every process on the VM can read it."""
    # `startup-script` updates in place; the `metadata_startup_script` argument would replace
    # the VM on every change.
    # Guest attributes let the VM publish its SSH host keys at every boot (kgg/agent/hostkeys.py),
    # which the laptop's ssh entry pins (kgg/cli/remote.py): every recreated VM has new keys.
    # The notebook's port and access, with the template's static IP, are where `kgg status`
    # finds the notebook: GCE's word, not the bucket's (whose writers could name another server).
    metadata = {
        "startup-script": startup_script,
        "enable-oslogin": "TRUE",
        "enable-guest-attributes": "TRUE",
        NOTEBOOK_PORT_KEY: str(settings.notebook_port),
        NOTEBOOK_ACCESS_KEY: settings.notebook_access,
    }
    if settings.image == "deeplearning":
        metadata["install-nvidia-driver"] = "True"
    return metadata


def instance_metadata(
    settings: StackSettings,
    startup_script: str,
    *,
    archive_sha256: str,
    bucket: str,
    workload_object: str,
    password_secret: str,
    group: str,
    notify_secret: str = "",
    stop_workflow: str = "",
) -> dict[str, str]:
    """Every metadata key the VM reads at boot (docs/CONTRACTS.md, "VM metadata"), from what the
    program knows and what the cloud assigned."""
    return (
        static_metadata(settings, startup_script)
        | {
            BUCKET_KEY: bucket,
            WORKLOAD_OBJECT_KEY: workload_object,
            WORKLOAD_SHA256_KEY: archive_sha256,
            RUN_ID_KEY: run_id(archive_sha256, settings),
            PASSWORD_SECRET_KEY: password_secret,
            GROUP_NAME_KEY: group,
            GROUP_REGION_KEY: settings.region,
            WORKSPACE_PREFIX_KEY: WORKSPACE_PREFIX,
        }
        | ({STOP_WORKFLOW_KEY: stop_workflow} if stop_workflow else {})
        | ({NOTIFY_SECRET_KEY: notify_secret} if notify_secret else {})
    )


def gpu_summary(settings: StackSettings) -> str:
    return f"{settings.gpus_attached}x {settings.gpu_type}"
