"""`Pulumi.<stack>.yaml` as `kgg init` edits it: the plain keys merged into what is there (secrets,
the secrets provider's salt and every other key kept), the comment lines at its top kept, and the
result checked with the program's own settings rules before anything is written."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from kgg.infra.settings import StackSettings, parse_settings
from kgg.infra.stack_config import PROJECT, declared_defaults

GCP_PROJECT = "gcp:project"
GCP_REGION = "gcp:region"


def own_key(key: str) -> str:
    """`gpuType` -> `keras-gpu-gcp:gpuType`, as `pulumi config set` writes it."""
    return key if ":" in key else f"{PROJECT}:{key}"


def find_project_root(start: Path) -> Path | None:
    """The folder holding this project's Pulumi.yaml: `start` or one above it, as Pulumi looks."""
    for folder in (start, *start.parents):
        manifest = folder / "Pulumi.yaml"
        if manifest.is_file():
            name = (yaml.safe_load(manifest.read_text()) or {}).get("name")
            return folder if name == PROJECT else None
    return None


def stack_path(root: Path, stack: str) -> Path:
    return root / f"Pulumi.{stack}.yaml"


def read_stack(path: Path) -> tuple[str, dict[str, Any]]:
    """The file's leading comment lines and its document ({} when there is no file)."""
    if not path.exists():
        return "", {}
    text = path.read_text()
    header = []
    for line in text.splitlines(keepends=True):
        if not line.startswith("#"):
            break
        header.append(line)
    return "".join(header), dict(yaml.safe_load(text) or {})


def merged(document: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """`document` with `values` (namespaced keys) set in its `config`, other keys untouched."""
    config = dict(document.get("config") or {})
    config.update(values)
    return {**document, "config": config}


def settings_of(document: Mapping[str, Any], root: Path) -> StackSettings:
    """The settings `pulumi up` would read from this document (Pulumi.yaml's defaults, then the
    document's keys), as kgg/infra/stack_config.py resolves them; SettingsError when invalid."""
    config = dict(document.get("config") or {})
    own = dict(declared_defaults(root))
    prefix = f"{PROJECT}:"
    own.update({key.removeprefix(prefix): value for key, value in config.items()
                if key.startswith(prefix)})  # fmt: skip
    return parse_settings(
        own,
        project=str(config.get(GCP_PROJECT, "")),
        region=str(config.get(GCP_REGION, "")),
        zone=str(config.get("gcp:zone", "")),
    )


def write_stack(path: Path, header: str, document: Mapping[str, Any]) -> None:
    body = yaml.safe_dump(dict(document), sort_keys=False, default_flow_style=False)
    path.write_text(header + body)
