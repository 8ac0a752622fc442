"""The stack's one ComponentResource: bucket, code archive, network, firewalls, service account,
the password secret, static IP, and the GPU VM as a one-VM regional group made from a template,
all children of it."""

from __future__ import annotations

from pathlib import Path

import pulumi
import pulumi_gcp as gcp
import pulumi_random as random

from kgg.common.contract import RUNS_PREFIX, STATUS_OBJECT
from kgg.infra import specs
from kgg.infra.archive import build_archive, write_archive
from kgg.infra.password import jupyter_password_hash
from kgg.infra.settings import StackSettings
from kgg.infra.stack_config import PROJECT_ROOT
from kgg.startup.render import render_startup_script

BUILD_DIR = PROJECT_ROOT / "build"


class GpuNotebook(pulumi.ComponentResource):
    """A GPU VM with JupyterLab and the training job, and the bucket for its data and results."""

    def __init__(
        self,
        name: str,
        settings: StackSettings,
        jupyter_password: pulumi.Input[str],
        stack: str,
        build_dir: Path = BUILD_DIR,
        opts: pulumi.ResourceOptions | None = None,
        notify_webhook: pulumi.Input[str] | None = None,
    ) -> None:
        super().__init__("keras-gpu-gcp:index:GpuNotebook", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        labels = specs.labels(settings, stack)

        self.bucket = gcp.storage.Bucket(
            f"{name}-bucket",
            location=settings.region.upper(),
            uniform_bucket_level_access=True,
            public_access_prevention="enforced",
            versioning={"enabled": True},
            # Status and progress documents are rewritten often: old versions go after a week.
            lifecycle_rules=[
                {
                    "action": {"type": "Delete"},
                    "condition": {"days_since_noncurrent_time": 7, "with_state": "ARCHIVED"},
                }
            ],
            force_destroy=not settings.keep_bucket_on_destroy,
            labels=labels,
            opts=pulumi.ResourceOptions(
                parent=self, retain_on_delete=settings.keep_bucket_on_destroy
            ),
        )

        archive = build_archive()
        self.workload = gcp.storage.BucketObject(
            f"{name}-workload",
            bucket=self.bucket.name,
            name=archive.object_name,
            source=pulumi.FileAsset(str(write_archive(archive, build_dir))),
            content_type="application/gzip",
            opts=child,
        )

        # Created once and kept in the state: the ids below stay the same on every `up`.
        suffix = random.RandomId(f"{name}-id-suffix", byte_length=specs.ID_SUFFIX_BYTES, opts=child)
        self.service_account = gcp.serviceaccount.Account(
            f"{name}-sa",
            account_id=suffix.hex.apply(lambda hex_: specs.service_account_id(stack, hex_)),
            display_name=f"keras-gpu-gcp VM ({stack})",
            opts=child,
        )
        member = self.service_account.email.apply(lambda email: f"serviceAccount:{email}")
        grants: list[pulumi.Resource] = [
            gcp.storage.BucketIAMMember(
                f"{name}-bucket-access",
                bucket=self.bucket.name,
                role=specs.BUCKET_ROLE,
                member=member,
                opts=child,
            )
        ]
        for role in specs.PROJECT_ROLES:
            grants.append(
                gcp.projects.IAMMember(
                    f"{name}-{role.split('.')[-1].lower()}",
                    project=settings.project,
                    role=role,
                    member=member,
                    opts=child,
                )
            )

        # Not among the VM's grants: the VM never waits for the jobs' account.
        self.jobs_account, self.jobs_grants = self._jobs_account(
            name, settings, stack, suffix, child
        )

        # A network of its own: the default network's allow-ssh-from-anywhere rules never apply.
        self.network = gcp.compute.Network(f"{name}-net", auto_create_subnetworks=False, opts=child)
        self.subnet = gcp.compute.Subnetwork(
            f"{name}-subnet",
            network=self.network.id,
            region=settings.region,
            ip_cidr_range=specs.SUBNET_RANGE,
            opts=child,
        )
        self.notebook_firewall = gcp.compute.Firewall(
            f"{name}-notebook",
            network=self.network.id,
            **specs.notebook_firewall(settings),
            opts=child,
        )
        self.ssh_firewall = gcp.compute.Firewall(
            f"{name}-iap-ssh", network=self.network.id, **specs.iap_ssh_firewall(), opts=child
        )

        self.address = gcp.compute.Address(
            f"{name}-ip",
            region=settings.region,
            address_type="EXTERNAL",
            network_tier="PREMIUM",
            labels=labels,
            opts=child,
        )

        salt = random.RandomBytes(f"{name}-password-salt", length=16, opts=child)
        hashed: pulumi.Output[str] = pulumi.Output.all(jupyter_password, salt.base64).apply(
            lambda values: jupyter_password_hash(values[0], values[1])
        )
        password_hash: pulumi.Output[str] = pulumi.Output.secret(hashed)
        # The hash goes to Secret Manager, readable by the VM's account alone: metadata is open to
        # every project Viewer and to every process on the VM.
        self.password_secret, self.password_version, grant = _vm_secret(
            f"{name}-jupyter-password", "hash",
            suffix.hex.apply(lambda hex_: specs.password_secret_id(stack, hex_)),
            password_hash, member, labels, child,
        )  # fmt: skip
        grants.append(grant)
        secret_versions = [self.password_version]
        # The webhook URL is a credential (anyone holding it posts to the channel): Secret
        # Manager, like the password hash, never metadata.
        self.notify_secret: gcp.secretmanager.Secret | None = None
        if notify_webhook is not None:
            self.notify_secret, version, grant = _vm_secret(
                f"{name}-notify-webhook", "url",
                suffix.hex.apply(lambda hex_: specs.notify_secret_id(stack, hex_)),
                pulumi.Output.secret(notify_webhook), member, labels, child,
            )  # fmt: skip
            grants.append(grant)
            secret_versions.append(version)
        # Rendered once, now: a template error stops the preview instead of hiding in an apply.
        startup_script = render_startup_script(settings)
        group_name = suffix.hex.apply(lambda hex_: specs.instance_group_name(stack, hex_))
        self.group_path = group_name.apply(
            lambda group: specs.instance_group_path(settings.project, settings.region, group)
        )
        grants += self._stop_workflow(name, settings, stack, suffix, member, labels, child)
        # Nothing secret in here, so a preview shows the startup script's diff in the clear.
        metadata = pulumi.Output.all(
            bucket=self.bucket.name,
            workload_object=self.workload.name,
            password_secret=self.password_secret.name,
            group=group_name,
            stop_workflow=self.stop_workflow_path,
            notify_secret=self.notify_secret.name if self.notify_secret else "",
        ).apply(
            lambda values: specs.instance_metadata(
                settings, startup_script, archive_sha256=archive.sha256, **values
            )
        )

        # What every VM of the group is made from. Templates cannot change: a new one replaces
        # it and the group rolls it out by its update policy.
        self.template = gcp.compute.InstanceTemplate(
            f"{name}-template",
            machine_type=settings.machine_type,
            disks=[
                {
                    "boot": True,
                    "auto_delete": True,
                    "source_image": specs.boot_image(settings),
                    "disk_size_gb": settings.boot_disk_size_gb,
                    "disk_type": "pd-balanced",
                    # The boot disk holds nothing the user made (the workspace lives in the
                    # bucket): it goes with its VM. Labelled for cost reports.
                    "labels": labels,
                }
            ],
            network_interfaces=[
                {
                    "subnetwork": self.subnet.id,
                    # The regional static IP: every VM of the group, in any zone of the region,
                    # gets the same address, so the notebook URL never changes.
                    "access_configs": [{"nat_ip": self.address.address, "network_tier": "PREMIUM"}],
                }
            ],
            guest_accelerators=specs.guest_accelerators(settings),
            scheduling=specs.scheduling(settings),
            shielded_instance_config=specs.shielded_instance_config(settings) or None,
            service_account={
                "email": self.service_account.email,
                # Access is limited by IAM (the grants above), as Google recommends.
                "scopes": [specs.CLOUD_PLATFORM_SCOPE],
            },
            metadata=metadata,
            tags=[specs.NETWORK_TAG],
            labels=specs.vm_labels(settings, stack),
            opts=child,
        )

        # One VM, in whichever of the zones has capacity; GCE keeps creating it until it exists
        # and recreates it after preemption, so `pulumi up` never waits for a stocked-out GPU.
        self.group = gcp.compute.RegionInstanceGroupManager(
            f"{name}-group",
            name=group_name,
            base_instance_name=group_name,
            project=settings.project or None,
            region=settings.region,
            versions=[{"name": "primary", "instance_template": self.template.self_link_unique}],
            target_size=1,
            distribution_policy_zones=list(settings.zones),
            distribution_policy_target_shape=specs.TARGET_SHAPE,
            update_policy=specs.update_policy(settings),
            instance_lifecycle_policy=specs.instance_lifecycle_policy(),
            wait_for_instances=False,
            opts=pulumi.ResourceOptions(
                parent=self,
                # The VM reads the secret and checks its stop workflow at boot: the secret's
                # version, the workflow and the grants come first.
                depends_on=[*grants, *secret_versions, self.stop_workflow],
                # The size belongs to the VM (idle shutdown resizes to 0) and to
                # `kgg start|stop`: `pulumi up` sets it only when it creates the group.
                ignore_changes=["targetSize"],
                # A new group (new zones) needs the static IP and GPU quota the old one's VM
                # holds, and the group name is fixed.
                delete_before_replace=True,
            ),
        )
        self.bucket_name = self.bucket.name
        self.external_ip = self.address.address
        self.notebook_url = (
            pulumi.Output.from_input(specs.IAP_NOTEBOOK_URL.format(port=settings.notebook_port))
            if settings.notebook_access == "iap"
            else pulumi.Output.concat(
                "https://", self.address.address, ":", str(settings.notebook_port)
            )
        )
        self.stack_outputs = {
            "bucketName": self.bucket_name,
            "bucketUrl": pulumi.Output.concat("gs://", self.bucket_name),
            "externalIp": self.external_ip,
            "notebookUrl": self.notebook_url,
            # The VM's name and zone are chosen by GCE at run time: `kgg status` and
            # `kgg ssh` find them from the group.
            "instanceGroup": self.group_path,
            "region": settings.region,
            "zones": list(settings.zones),
            "sshCommand": specs.SSH_COMMAND,
            "statusUrl": pulumi.Output.concat("gs://", self.bucket_name, "/", STATUS_OBJECT),
            "runsUrl": pulumi.Output.concat("gs://", self.bucket_name, "/", RUNS_PREFIX),
            "workspaceUrl": pulumi.Output.concat(
                "gs://", self.bucket_name, "/", specs.WORKSPACE_PREFIX
            ),
            "estimatedHourlyUsd": settings.estimated_hourly_usd,
            # What `kgg submit` and `kgg sweep` read (kgg/cli/vertex_jobs.py).
            "project": settings.project,
            "stack": stack,
            "dataPath": settings.data_path,
            "labels": labels,
            "jobsServiceAccount": self.jobs_account.email,
            "gpu": specs.gpu_summary(settings),
        }
        self.register_outputs(self.stack_outputs)

    def _jobs_account(
        self,
        name: str,
        settings: StackSettings,
        stack: str,
        suffix: random.RandomId,
        opts: pulumi.ResourceOptions,
    ) -> tuple[gcp.serviceaccount.Account, list[pulumi.Resource]]:
        """The identity Vertex AI runs `kgg submit`/`kgg sweep` jobs as: the stack's bucket
        objects (code archive, data, runs) and log writing, nothing else. The laptop user acts as
        it when creating a job (iam.serviceAccounts.actAs: the project's Owner has it; others
        need roles/iam.serviceAccountUser on this account, README "Vertex AI")."""
        account = gcp.serviceaccount.Account(
            f"{name}-jobs-sa",
            account_id=suffix.hex.apply(lambda hex_: specs.jobs_account_id(stack, hex_)),
            display_name=f"keras-gpu-gcp Vertex AI jobs ({stack})",
            opts=opts,
        )
        member = account.email.apply(lambda email: f"serviceAccount:{email}")
        grants: list[pulumi.Resource] = [
            gcp.storage.BucketIAMMember(
                f"{name}-jobs-bucket-access",
                bucket=self.bucket.name,
                role=specs.BUCKET_ROLE,
                member=member,
                opts=opts,
            )
        ]
        for role in specs.PROJECT_ROLES:
            grants.append(
                gcp.projects.IAMMember(
                    f"{name}-jobs-{role.split('.')[-1].lower()}",
                    project=settings.project,
                    role=role,
                    member=member,
                    opts=opts,
                )
            )
        return account, grants

    def _stop_workflow(
        self,
        name: str,
        settings: StackSettings,
        stack: str,
        suffix: random.RandomId,
        vm_member: pulumi.Output[str],
        labels: dict[str, str],
        opts: pulumi.ResourceOptions,
    ) -> list[pulumi.Resource]:
        """How the VM stops itself without any permission that changes what runs on it: a
        workflow, running as an account of its own that alone may update the VM's group, whose
        definition only resizes that group to 0. The VM's account may only start it (and read
        its executions); the worst a notebook user can do with the VM's token is stop the VM.
        Returns the two grants (the VM waits for them)."""
        self.stopper = gcp.serviceaccount.Account(
            f"{name}-stop-sa",
            account_id=suffix.hex.apply(lambda hex_: specs.stopper_account_id(stack, hex_)),
            display_name=f"keras-gpu-gcp stop workflow ({stack})",
            opts=opts,
        )
        stopper = self.stopper.email.apply(lambda email: f"serviceAccount:{email}")
        # Exactly that group (an IAM condition on its resource name), never the project's others.
        self.group_resize_role, self.group_resize_grant = _conditional_grant(
            f"{name}-group-resize", settings.project,
            suffix.hex.apply(lambda hex_: specs.group_resize_role_id(stack, hex_)),
            f"keras-gpu-gcp stop workflow resizes the VM group ({stack})",
            "Read and resize the stack's own VM group (the stop workflow only).",
            specs.STOPPER_PERMISSIONS, stopper,
            self.group_path.apply(specs.group_resize_condition), opts,
        )  # fmt: skip
        workflow_name = suffix.hex.apply(lambda hex_: specs.stop_workflow_name(stack, hex_))
        self.stop_workflow_path = workflow_name.apply(
            lambda workflow: specs.workflow_path(settings.project, settings.region, workflow)
        )
        self.stop_workflow = gcp.workflows.Workflow(
            f"{name}-stop",
            name=workflow_name,
            project=settings.project,
            region=settings.region,
            description=f"Stops the keras-gpu-gcp VM of stack {stack} (resizes its group to 0).",
            service_account=self.stopper.email,
            source_contents=self.group_path.apply(specs.stop_workflow_source),
            call_log_level="LOG_ERRORS_ONLY",
            labels=labels,
            deletion_protection=False,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.group_resize_grant]),
        )
        # Workflows has no IAM policy per workflow (the API and pulumi-gcp offer none): a project
        # binding whose condition names this workflow and its executions.
        self.stop_invoke_role, self.stop_invoke_grant = _conditional_grant(
            f"{name}-stop-invoke", settings.project,
            suffix.hex.apply(lambda hex_: specs.stop_invoke_role_id(stack, hex_)),
            f"keras-gpu-gcp VM starts its stop workflow ({stack})",
            "Start the stack's stop workflow and read its executions (the VM).",
            specs.STOP_INVOKE_PERMISSIONS, vm_member,
            self.stop_workflow_path.apply(specs.stop_invoke_condition), opts,
        )  # fmt: skip
        return [self.group_resize_grant, self.stop_invoke_grant]


def _conditional_grant(
    name: str,
    project: str,
    role_id: pulumi.Input[str],
    title: str,
    description: str,
    permissions: tuple[str, ...],
    member: pulumi.Input[str],
    condition: pulumi.Input[gcp.projects.IAMMemberConditionArgsDict],
    opts: pulumi.ResourceOptions,
) -> tuple[gcp.projects.IAMCustomRole, gcp.projects.IAMMember]:
    """A custom role with exactly `permissions`, bound on the project to `member` under an IAM
    condition that names the one resource it is for."""
    role = gcp.projects.IAMCustomRole(
        f"{name}-role", project=project, role_id=role_id, title=title,
        description=description, permissions=list(permissions), opts=opts,
    )  # fmt: skip
    grant = gcp.projects.IAMMember(
        name, project=project, role=role.name, member=member, condition=condition, opts=opts
    )
    return role, grant


def _vm_secret(
    name: str,
    version_suffix: str,
    secret_id: pulumi.Input[str],
    data: pulumi.Input[str],
    member: pulumi.Input[str],
    labels: pulumi.Input[dict[str, str]],
    opts: pulumi.ResourceOptions,
) -> tuple[gcp.secretmanager.Secret, gcp.secretmanager.SecretVersion, pulumi.Resource]:
    """A Secret Manager secret holding `data` as its one version, and the grant that lets the
    VM's account (`member`) alone read it."""
    secret = gcp.secretmanager.Secret(
        name, secret_id=secret_id, replication={"auto": {}}, labels=labels, opts=opts
    )
    version = gcp.secretmanager.SecretVersion(
        f"{name}-{version_suffix}", secret=secret.id, secret_data=data, opts=opts
    )
    grant = gcp.secretmanager.SecretIamMember(
        f"{name}-access", secret_id=secret.id, role=specs.SECRET_ROLE, member=member, opts=opts
    )
    return secret, version, grant
