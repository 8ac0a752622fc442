"""Reads the stack's Pulumi config once into StackSettings (the only place that touches
pulumi.Config), warning loudly where the user opened the notebook to the world."""

from __future__ import annotations

import json

import pulumi

from infra.settings import (
    ALLOW_MY_ADDRESS,
    CONFIG_KEYS,
    OPEN_TO_WORLD,
    SettingsError,
    StackSettings,
    parse_settings,
)

OBJECT_KEYS = {"allowedSourceRanges", "trainingArgs", "labels"}


def load_settings() -> tuple[StackSettings, pulumi.Output[str]]:
    """The settings and the Jupyter password (a secret Output). Raises SettingsError."""
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
    password = config.get_secret("jupyterPassword")
    if password is None:
        raise SettingsError(
            "jupyterPassword is not set; the notebook needs one. Set it as a secret:\n"
            "  pulumi config set --secret jupyterPassword"
        )
    if settings.open_to_world:
        world = [cidr for cidr in settings.allowed_source_ranges if cidr in OPEN_TO_WORLD]
        pulumi.log.warn(
            f"allowedSourceRanges contains {world}: the notebook port {settings.notebook_port} "
            "is open to the WHOLE INTERNET, guarded only by the password. Prefer your own "
            f"address: {ALLOW_MY_ADDRESS}"
        )
    return settings, password
