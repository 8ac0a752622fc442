"""Reads the stack's Pulumi config once into StackSettings (the only place that touches
pulumi.Config), warning loudly where the notebook is open to a large part of the internet."""

from __future__ import annotations

import json

import pulumi

from kgg.infra.catalogue import ZONES_CHECKED
from kgg.infra.password import check_password
from kgg.infra.settings import (
    ALLOW_MY_ADDRESS,
    CONFIG_KEYS,
    IPV4_ADDRESSES,
    SettingsError,
    StackSettings,
    check_webhook,
    parse_settings,
)

OBJECT_KEYS = {"zones", "allowedSourceRanges", "trainingArgs", "labels"}


def load_settings() -> tuple[StackSettings, pulumi.Output[str]]:
    """The settings and the Jupyter password (a secret Output).

    Raises SettingsError, or PasswordError for a short password: here, before any resource is
    declared, so a new stack's `pulumi up` fails before it creates anything."""
    config = pulumi.Config()
    gcp_config = pulumi.Config("gcp")
    raw: dict[str, object] = {}
    for key in CONFIG_KEYS:
        value = config.get(key)
        raw[key] = json.loads(value) if key in OBJECT_KEYS and value else value
    settings = parse_settings(
        raw,
        project=gcp_config.get("project") or "",
        region=gcp_config.get("region") or "",
        zone=gcp_config.get("zone") or "",
    )
    # Config values are plain strings in the program (get_secret only wraps them): checking the
    # length here does not depend on any resource, unlike a check inside an apply.
    password = config.get("jupyterPassword")
    if password is None:
        raise SettingsError(
            "jupyterPassword is not set; the notebook needs one. Set it as a secret:\n"
            "  pulumi config set --secret jupyterPassword"
        )
    check_password(password)
    if settings.widely_open:
        reach = (
            "the WHOLE INTERNET"
            if settings.reachable_addresses == IPV4_ADDRESSES
            else f"{settings.reachable_addresses:,} addresses, more than a /8"
        )
        pulumi.log.warn(
            f"allowedSourceRanges {list(settings.allowed_source_ranges)} open the notebook port "
            f"{settings.notebook_port} to {reach}, guarded only by the password. Prefer your "
            f"own address: {ALLOW_MY_ADDRESS}"
        )
    if settings.zones_without_gpu:
        pulumi.log.warn(
            f"zones {list(settings.zones_without_gpu)} do not offer {settings.gpu_type} according "
            f"to the GPU catalogue (checked {ZONES_CHECKED}); the group cannot create the VM "
            "there. Check with `gcloud compute accelerator-types list "
            f"--filter=name={settings.gpu_type}` and fix `zones` (or `gcp:zone`)"
        )
    return settings, pulumi.Output.secret(password)


def load_notify_webhook() -> pulumi.Output[str] | None:
    """notifyWebhook (a secret Output), checked at preview; None when it is not set."""
    value = pulumi.Config().get("notifyWebhook")
    return pulumi.Output.secret(check_webhook(value)) if value else None
