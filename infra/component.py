"""The stack's one ComponentResource: bucket, code archive, network, firewalls, service account,
the password secret, static IP and the GPU VM, all children of it."""

from __future__ import annotations

from pathlib import Path

import pulumi
import pulumi_gcp as gcp
import pulumi_random as random

from infra import specs
from infra.archive import build_archive, write_archive
from infra.password import jupyter_password_hash
from infra.settings import StackSettings
from infra.stack_config import PROJECT_ROOT
from startup.render import render_startup_script

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
        password_hash = pulumi.Output.secret(
            pulumi.Output.all(jupyter_password, salt.base64).apply(
                lambda values: jupyter_password_hash(values[0], values[1])
            )
        )
        # The hash goes to Secret Manager, readable by the VM's account alone: metadata is open to
        # every project Viewer and to every process on the VM.
        self.password_secret = gcp.secretmanager.Secret(
            f"{name}-jupyter-password",
            secret_id=suffix.hex.apply(lambda hex_: specs.password_secret_id(stack, hex_)),
            replication={"auto": {}},
            labels=labels,
            opts=child,
        )
        self.password_version = gcp.secretmanager.SecretVersion(
            f"{name}-jupyter-password-hash",
            secret=self.password_secret.id,
            secret_data=password_hash,
            opts=child,
        )
        grants.append(
            gcp.secretmanager.SecretIamMember(
                f"{name}-jupyter-password-access",
                secret_id=self.password_secret.id,
                role=specs.SECRET_ROLE,
                member=member,
                opts=child,
            )
        )
        # Rendered once, now: a template error stops the preview instead of hiding in an apply.
        startup_script = render_startup_script(settings)
        # Nothing secret in here, so a preview shows the startup script's diff in the clear.
        metadata = pulumi.Output.all(
            bucket=self.bucket.name,
            workload_object=self.workload.name,
            password_secret=self.password_secret.name,
        ).apply(
            lambda values: specs.instance_metadata(
                settings, startup_script, archive_sha256=archive.sha256, **values
            )
        )

        self.instance = gcp.compute.Instance(
            f"{name}-vm",
            zone=settings.zone,
            machine_type=settings.machine_type,
            boot_disk={
                "initialize_params": {
                    "image": specs.boot_image(settings),
                    "size": settings.boot_disk_size_gb,
                    "type": "pd-balanced",
                    # Billed while the VM is stopped: cost reports must find the disk. Labels
                    # update in place (magic-modules#15081); the fields above recreate the VM.
                    "labels": labels,
                }
            },
            network_interfaces=[
                {
                    "subnetwork": self.subnet.id,
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
            labels=labels,
            allow_stopping_for_update=True,
            opts=pulumi.ResourceOptions(
                parent=self,
                # The VM reads the secret at boot: its version and the grant come first.
                depends_on=[*grants, self.password_version],
                # The replacement needs the static IP (and the GPU quota) the old VM holds. It
                # takes the boot disk with it: README "Settings that recreate the VM".
                delete_before_replace=True,
            ),
        )

        self.bucket_name = self.bucket.name
        self.external_ip = self.address.address
        self.notebook_url = pulumi.Output.concat(
            "https://", self.address.address, ":", str(settings.notebook_port)
        )
        self.ssh_command = self.instance.name.apply(
            lambda instance: specs.ssh_command(instance, settings)
        )
        self.stack_outputs = {
            "bucketName": self.bucket_name,
            "bucketUrl": pulumi.Output.concat("gs://", self.bucket_name),
            "externalIp": self.external_ip,
            "notebookUrl": self.notebook_url,
            "instanceName": self.instance.name,
            "zone": settings.zone,
            "sshCommand": self.ssh_command,
            "statusUrl": pulumi.Output.concat("gs://", self.bucket_name, "/status/startup.json"),
            "runsUrl": pulumi.Output.concat("gs://", self.bucket_name, "/runs/"),
            "estimatedHourlyUsd": specs.estimated_hourly_usd(settings),
            "gpu": specs.gpu_summary(settings),
        }
        self.register_outputs(self.stack_outputs)
