"""Runs the Pulumi program in-process with mocks (kgg/infra/declared.py): config loaded the way the
CLI would (Pulumi.yaml defaults + Pulumi.dev.yaml + overrides), every resource recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kgg.infra import declared
from kgg.infra.declared import COMPUTE_URL, Recorded, RecordingMocks

__all__ = ["COMPUTE_URL", "Recorded", "RecordingMocks", "build", "engine_config", "start"]

CANARY_PASSWORD = "canary-Pa55word-7f3e"
MY_RANGE = "203.0.113.7/32"
FAKE_IP = "198.51.100.20"
FAKE_PROJECT_NUMBER = "123456789012"


def engine_config(overrides: dict[str, Any] | None = None, password: str | None = CANARY_PASSWORD):
    """Config as the engine passes it to the program: every value a string."""
    return declared.engine_config(
        {"allowedSourceRanges": [MY_RANGE], **(overrides or {})}, password
    )


def start(overrides: dict[str, Any] | None = None, password: str | None = CANARY_PASSWORD):
    """Fresh mocks and config for one program run; returns the mocks that record it (each run
    a new stack: a random suffix)."""
    return declared.start(
        {"allowedSourceRanges": [MY_RANGE], **(overrides or {})},
        password,
        declared.Cloud(project_number=FAKE_PROJECT_NUMBER, external_ip=FAKE_IP),
    )


def build(tmp_path: Path, overrides: dict[str, Any] | None = None):
    """Runs the program's wiring (settings from config, the component) under fresh mocks."""
    from kgg.infra.component import GpuNotebook
    from kgg.infra.pulumi_config import load_settings

    mocks = start(overrides)
    settings, password = load_settings()
    notebook = GpuNotebook("kg", settings, password, stack="dev", build_dir=tmp_path)
    return notebook, settings, mocks
