"""The real-boot suite runs where it can (root, systemd-nspawn, debootstrap, nsenter) and skips in
one line where it cannot; with KGG_REQUIRE_BOOT_SUITE=1 (CI) a missing piece is a failure."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.prerequisites import unavailable

REQUIRED_ENV = "KGG_REQUIRE_BOOT_SUITE"
TOOLS = {
    "systemd-nspawn": "systemd-container",
    "debootstrap": "debootstrap",
    "nsenter": "util-linux",
}


def missing_prerequisites() -> list[str]:
    missing = [f"{tool} (apt install {package})" for tool, package in TOOLS.items()
               if shutil.which(tool) is None]  # fmt: skip
    if os.geteuid() != 0:
        missing.insert(0, "root")
    return missing


@pytest.fixture(scope="session")
def boot_prerequisites() -> None:
    missing = missing_prerequisites()
    if not missing:
        return
    unavailable(f"real-boot suite needs {', '.join(missing)}", REQUIRED_ENV)
