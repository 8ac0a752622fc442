"""The program run in-process under Pulumi's mocks: every resource it would declare for a stack,
with the inputs it would send, and no cloud. The tests of infra/ read it to check each resource;
the IAM-enforcing test doubles read the bindings from it (kgg/infra/access.py), so what they enforce
is what `pulumi up` grants, never a second copy of it.

The mocks answer what the cloud would assign (a bucket's name, an account's email, a secret's
name, a random suffix): `Cloud` says what, so a test's stack can use the test's own bucket,
project and group names."""

from __future__ import annotations

import json
import secrets
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi

from kgg.infra.stack_config import PROJECT, resolve_config

# A secret's config key: the engine hands it to the program as a secret.
PASSWORD_KEY = f"{PROJECT}:jupyterPassword"
COMPUTE_URL = "https://www.googleapis.com/compute/v1"
DEFAULT_PASSWORD = "declared-only-Pa55word"


@dataclass(frozen=True)
class Cloud:
    """What the mocks answer for the values the cloud assigns. `suffix` None: a random one per
    run, as the random provider gives each new stack."""

    project_number: str = "123456789012"
    external_ip: str = "198.51.100.20"
    bucket: str | None = None
    suffix: str | None = None


@dataclass
class Recorded:
    type: str
    name: str
    inputs: dict[str, Any]
    outputs: dict[str, Any] = field(default_factory=dict)


@dataclass
class RecordingMocks(pulumi.runtime.Mocks):
    cloud: Cloud = field(default_factory=Cloud)
    resources: list[Recorded] = field(default_factory=list)

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        outputs = dict(args.inputs)
        resource_id = f"{args.name}-id"
        if args.typ == "gcp:storage/bucket:Bucket":
            outputs.setdefault("name", self.cloud.bucket or f"{args.name}-a1b2c3")
        if args.typ == "gcp:compute/address:Address":
            outputs["address"] = self.cloud.external_ip
        if args.typ == "gcp:serviceaccount/account:Account":
            outputs["email"] = f"{args.inputs['accountId']}@proj.iam.gserviceaccount.com"
        if args.typ == "gcp:compute/instanceTemplate:InstanceTemplate":
            outputs["selfLinkUnique"] = (
                f"{COMPUTE_URL}/projects/p/global/instanceTemplates/{args.name}?uniqueId=1"
            )
        if args.typ == "gcp:projects/iAMCustomRole:IAMCustomRole":
            outputs["name"] = f"projects/{args.inputs['project']}/roles/{args.inputs['roleId']}"
        if args.typ == "random:index/randomBytes:RandomBytes":
            outputs["base64"] = "AAECAwQFBgcICQoLDA0ODw=="
            outputs["hex"] = "000102030405060708090a0b0c0d0e0f"
        if args.typ == "random:index/randomId:RandomId":
            outputs["hex"] = self.cloud.suffix or secrets.token_hex(int(args.inputs["byteLength"]))
        if args.typ == "gcp:secretmanager/secret:Secret":
            resource_id = f"projects/{self.cloud.project_number}/secrets/{args.inputs['secretId']}"
            outputs["name"] = resource_id
        if args.typ == "gcp:workflows/workflow:Workflow":
            project, region = args.inputs.get("project"), args.inputs.get("region")
            resource_id = f"projects/{project}/locations/{region}/workflows/{args.inputs['name']}"
        self.resources.append(Recorded(args.typ, args.name, dict(args.inputs), outputs))
        return resource_id, outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, list | None]:
        return {}, None

    def of_type(self, type_token: str) -> list[Recorded]:
        return [r for r in self.resources if r.type == type_token]


def engine_config(overrides: Mapping[str, Any] | None, password: str | None) -> dict[str, str]:
    """Config as the engine passes it to the program: every value a string."""
    config = resolve_config("dev", overrides)
    if password is not None:
        config[PASSWORD_KEY] = password
    return {key: v if isinstance(v, str) else json.dumps(v) for key, v in config.items()}


def start(
    overrides: Mapping[str, Any] | None = None,
    password: str | None = DEFAULT_PASSWORD,
    cloud: Cloud | None = None,
) -> RecordingMocks:
    """Fresh mocks and config for one program run; returns the mocks that record it."""
    mocks = RecordingMocks(cloud or Cloud())
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack="dev", preview=False)
    pulumi.runtime.set_all_config(engine_config(overrides, password), secret_keys=[PASSWORD_KEY])
    return mocks


def declare(
    overrides: Mapping[str, Any] | None = None,
    cloud: Cloud | None = None,
    build_dir: Path | None = None,
) -> list[Recorded]:
    """Every resource the program declares for the dev stack with `overrides`, once all are
    registered (the way `pulumi.runtime.test` waits for them)."""
    from kgg.infra.component import GpuNotebook
    from kgg.infra.pulumi_config import load_notify_webhook, load_settings

    recorded: list[RecordingMocks] = []
    with tempfile.TemporaryDirectory(prefix="kgg-declared-") as scratch:

        @pulumi.runtime.test
        def run() -> pulumi.Output[Any]:
            mocks = start(overrides, cloud=cloud)
            recorded.append(mocks)
            settings, password = load_settings()
            notebook = GpuNotebook(
                "kg", settings, password, stack="dev",
                build_dir=build_dir or Path(scratch), notify_webhook=load_notify_webhook(),
            )  # fmt: skip
            return notebook.group.urn

        run()
    return recorded[0].resources
