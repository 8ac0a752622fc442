"""The stacks the IAM-enforcing test doubles serve: the program declared under Pulumi's mocks for a
test's bucket and names (kgg/infra/declared.py), its grants (kgg/infra/access.py) plus the
laptop user as the project's Owner, and one bearer token per identity (the VM's comes from the
fake metadata server, the laptop user's from an authorized_user file refreshed at the GCS front)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from kgg.infra import access, declared

PROJECT = "kgg-demo-project"
PROJECT_NUMBER = "123456789012"
REGION = "us-central1"
SUFFIX = "0a1b2c"
LAPTOP_USER = "user:you@example.com"


@dataclass(frozen=True)
class Stack:
    """A declared stack's names, its grants and the tokens of its identities."""

    authority: access.Authority
    bucket: str
    project: str
    group: str
    owner_token: str
    vm_token: str
    stopper_token: str
    password_secret: str
    notify_secret: str

    @property
    def grants(self) -> access.Grants:
        return self.authority.grants

    @property
    def vm_email(self) -> str:
        return self.grants.identities[access.VM].partition(":")[2]

    @property
    def group_path(self) -> str:
        return f"projects/{self.project}/regions/{REGION}/instanceGroupManagers/{self.group}"

    @property
    def workflow(self) -> access.Workflow:
        (workflow,) = self.grants.workflows
        return workflow


@functools.cache
def stack(
    bucket: str, project: str = PROJECT, suffix: str = SUFFIX, project_number: str = PROJECT_NUMBER
) -> Stack:
    """The dev stack declared with these names (a webhook set, so both secrets exist)."""
    resources = declared.declare(
        {"allowedSourceRanges": ["203.0.113.7/32"], "gcp:project": project,
         "gcp:region": REGION, "notifyWebhook": "https://hooks.slack.com/services/T0/B0/x"},
        declared.Cloud(project_number=project_number, bucket=bucket, suffix=suffix),
    )  # fmt: skip
    grants = access.from_resources(resources).with_owner(LAPTOP_USER)
    authority = access.Authority(grants)
    secrets = {
        r.name: r.outputs["name"] for r in resources if r.type == "gcp:secretmanager/secret:Secret"
    }
    return Stack(
        authority=authority,
        bucket=bucket,
        project=project,
        group=f"kgg-dev-{suffix}",
        owner_token=authority.issue(LAPTOP_USER),
        vm_token=authority.issue(grants.identities[access.VM]),
        stopper_token=(
            authority.issue(grants.identities[access.STOPPER])
            if access.STOPPER in grants.identities
            else ""
        ),
        password_secret=secrets["kg-jupyter-password"],
        notify_secret=secrets["kg-notify-webhook"],
    )


def client_with(token: str) -> Any:
    """A google-cloud-storage client that sends `token` (to the front: STORAGE_EMULATOR_HOST)."""
    from google.cloud import storage
    from google.oauth2.credentials import Credentials

    return storage.Client(project=PROJECT, credentials=Credentials(token))
