"""Runs the Pulumi program in-process with mocks: config loaded the way the CLI would
(Pulumi.yaml defaults + Pulumi.dev.yaml + overrides), every resource recorded."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi

from infra.stack_config import PROJECT, resolve_config

CANARY_PASSWORD = "canary-Pa55word-7f3e"
MY_RANGE = "203.0.113.7/32"
FAKE_IP = "198.51.100.20"
FAKE_PROJECT_NUMBER = "123456789012"
COMPUTE_URL = "https://www.googleapis.com/compute/v1"


@dataclass
class Recorded:
    type: str
    name: str
    inputs: dict[str, Any]


@dataclass
class RecordingMocks(pulumi.runtime.Mocks):
    resources: list[Recorded] = field(default_factory=list)

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        self.resources.append(Recorded(args.typ, args.name, dict(args.inputs)))
        outputs = dict(args.inputs)
        if args.typ == "gcp:storage/bucket:Bucket":
            outputs.setdefault("name", f"{args.name}-a1b2c3")
        if args.typ == "gcp:compute/address:Address":
            outputs["address"] = FAKE_IP
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
            # Random as the provider's: each program run here is a new stack.
            outputs["hex"] = secrets.token_hex(int(args.inputs["byteLength"]))
        if args.typ == "gcp:secretmanager/secret:Secret":
            name = f"projects/{FAKE_PROJECT_NUMBER}/secrets/{args.inputs['secretId']}"
            outputs["name"] = name
            return name, outputs
        return f"{args.name}-id", outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, list | None]:
        return {}, None

    def of_type(self, type_token: str) -> list[Recorded]:
        return [r for r in self.resources if r.type == type_token]


def engine_config(overrides: dict[str, Any] | None = None, password: str | None = CANARY_PASSWORD):
    """Config as the engine passes it to the program: every value a string."""
    values = {"allowedSourceRanges": [MY_RANGE], **(overrides or {})}
    config = resolve_config("dev", values)
    if password is not None:
        config[f"{PROJECT}:jupyterPassword"] = password
    return {key: v if isinstance(v, str) else json.dumps(v) for key, v in config.items()}


def start(overrides: dict[str, Any] | None = None, password: str | None = CANARY_PASSWORD):
    """Fresh mocks and config for one program run; returns the mocks that record it."""
    mocks = RecordingMocks()
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack="dev", preview=False)
    pulumi.runtime.set_all_config(
        engine_config(overrides, password), secret_keys=[f"{PROJECT}:jupyterPassword"]
    )
    return mocks


def build(tmp_path: Path, overrides: dict[str, Any] | None = None):
    """Runs the program's wiring (settings from config, the component) under fresh mocks."""
    from infra.component import GpuNotebook
    from infra.pulumi_config import load_settings

    mocks = start(overrides)
    settings, password = load_settings()
    notebook = GpuNotebook("kg", settings, password, stack="dev", build_dir=tmp_path)
    return notebook, settings, mocks
