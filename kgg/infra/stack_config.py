"""Reads a stack's configuration from the project files the way the Pulumi CLI would:
Pulumi.yaml defaults, then Pulumi.<stack>.yaml, then overrides. For tests and for
`python -m kgg.infra render`, which run without the CLI."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from kgg.infra.settings import StackSettings, parse_settings

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PROJECT = "keras-gpu-gcp"


def declared_defaults(root: Path = PROJECT_ROOT) -> dict[str, Any]:
    """The project's own keys with the defaults Pulumi.yaml declares (keys with none left out)."""
    declared = yaml.safe_load((root / "Pulumi.yaml").read_text())["config"]
    return {key: spec["default"] for key, spec in declared.items() if "default" in spec}


def stack_values(stack: str, root: Path = PROJECT_ROOT) -> dict[str, Any]:
    """The stack file's values, namespaced keys as written (`gcp:zone`, `keras-gpu-gcp:spot`)."""
    path = root / f"Pulumi.{stack}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"no stack file {path}; create it with `pulumi stack init {stack}`")
    return dict((yaml.safe_load(path.read_text()) or {}).get("config") or {})


def resolve_config(
    stack: str = "dev", overrides: Mapping[str, Any] | None = None, root: Path = PROJECT_ROOT
) -> dict[str, Any]:
    """All config as `namespace:key` -> value, the way the engine would see it."""
    config = {f"{PROJECT}:{key}": value for key, value in declared_defaults(root).items()}
    for key, value in {**stack_values(stack, root), **(overrides or {})}.items():
        config[key if ":" in key else f"{PROJECT}:{key}"] = value
    return config


def settings_for_stack(
    stack: str = "dev", overrides: Mapping[str, Any] | None = None, root: Path = PROJECT_ROOT
) -> StackSettings:
    config = resolve_config(stack, overrides, root)
    own = {key.split(":", 1)[1]: value for key, value in config.items()
           if key.startswith(f"{PROJECT}:")}  # fmt: skip
    return parse_settings(
        own,
        project=str(config.get("gcp:project", "")),
        region=str(config.get("gcp:region", "")),
        zone=str(config.get("gcp:zone", "")),
    )
