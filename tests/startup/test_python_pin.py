"""The VM's interpreter against uv.lock: every wheel the VM installs must exist for the Python
the startup script picks on every image (uv once picked CPython 3.15, for which TensorFlow has no
wheel, and no boot got past the Python step)."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.specifiers import SpecifierSet
from packaging.utils import parse_wheel_filename

from kgg.infra.catalogue import IMAGES
from kgg.startup import bootstrap, render
from tests.startup.harness import heredoc, settings_for

ROOT = Path(__file__).resolve().parents[2]
LOCK = tomllib.loads((ROOT / "uv.lock").read_text())
# A package can be locked at several versions, each for some Pythons (resolution-markers).
VERSIONS: dict[str, list[dict]] = {}
for _package in LOCK["package"]:
    VERSIONS.setdefault(_package["name"], []).append(_package)
PROJECT = VERSIONS["keras-gpu-gcp"][0]
# What the VM's `uv sync --no-default-groups --extra ml --extra vm` installs: the dependencies and
# the two extras, no group.
ROOTS = [
    *PROJECT["dependencies"],
    *PROJECT["optional-dependencies"]["ml"],
    *PROJECT["optional-dependencies"]["vm"],
]


def minors() -> list[str]:
    low, high = (int(v.split(".")[1]) for v in (render.PYTHON_MIN, render.PYTHON_MAX))
    return [f"3.{minor}" for minor in range(low, high + 1)]


def linux_environment(python: str) -> dict[str, str]:
    return {
        "python_version": python,
        "python_full_version": f"{python}.0",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "extra": "",
    }


def locked(dep: dict, environment: dict[str, str]) -> dict:
    """The locked entry a dependency resolves to for this environment."""
    candidates = VERSIONS[dep["name"]]
    if "version" in dep:
        candidates = [c for c in candidates if c["version"] == dep["version"]]
    if len(candidates) > 1:
        candidates = [
            c
            for c in candidates
            if any(Marker(m).evaluate(environment) for m in c.get("resolution-markers", []))
        ]
    (package,) = candidates
    return package


def vm_packages(python: str) -> dict[str, dict]:
    """The packages uv installs on the VM for this Python (markers evaluated for Linux x86_64)."""
    environment = linux_environment(python)
    seen: dict[str, dict] = {}
    todo = list(ROOTS)
    while todo:
        dep = todo.pop()
        if "marker" in dep and not Marker(dep["marker"]).evaluate(environment):
            continue
        package = locked(dep, environment)
        extras = dep.get("extra", [])
        if dep["name"] in seen and not extras:
            continue
        seen[dep["name"]] = package
        todo.extend(package.get("dependencies", []))
        for extra in extras:
            todo.extend(package.get("optional-dependencies", {}).get(extra, []))
    return seen


def installable(package: dict, python: str) -> bool:
    """A wheel for CPython `python` on manylinux x86_64 (or a pure one); a package published
    as an sdist only is built on the VM."""
    wheels = package.get("wheels", [])
    if not wheels:
        return "sdist" in package
    cp = f"cp{python.replace('.', '')}"
    for wheel in wheels:
        _, _, _, tags = parse_wheel_filename(wheel["url"].rsplit("/", 1)[1])
        for tag in tags:
            platform_ok = tag.platform == "any" or (
                re.match(r"(manylinux|linux)", tag.platform) and tag.platform.endswith("x86_64")
            )
            if not platform_ok:
                continue
            if tag.interpreter in (cp, "py3", f"py{python.replace('.', '')}"):
                return True
            if tag.abi == "abi3" and int(tag.interpreter[3:]) <= int(cp[2:]):
                return True
    return False


@pytest.mark.parametrize("python", minors())
def test_every_vm_package_has_a_wheel_for_each_supported_python(python: str) -> None:
    packages = vm_packages(python)
    assert {"tensorflow", "jupyterlab", "nvidia-cudnn-cu12"} <= packages.keys()
    missing = sorted(name for name, package in packages.items() if not installable(package, python))
    assert missing == [], f"no wheel for CPython {python} on Linux x86_64: {missing}"


def test_a_python_outside_the_range_is_caught() -> None:
    """The check above can fail: TensorFlow 2.21 has no wheel for 3.14 or 3.10."""
    (tensorflow,) = VERSIONS["tensorflow"]
    assert not installable(tensorflow, "3.14")
    assert not installable(tensorflow, "3.10")


def test_the_range_is_pyprojects_requires_python() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    allowed = SpecifierSet(pyproject["project"]["requires-python"])
    assert [m for m in ("3.10", *minors(), "3.14") if f"{m}.0" in allowed] == minors()
    assert SpecifierSet(LOCK["requires-python"]) == allowed


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_each_image_gets_a_python_the_lock_supports(
    image: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the rendered script installs: the image's python3 when in range, else uv's."""
    script = render.render_startup_script(settings_for(image=image))
    settings = json.loads(heredoc(script, "KGG_SETTINGS"))
    system = IMAGES[image].system_python
    python3 = tmp_path / "usr/bin/python3"  # the image's, answering the script's version query
    python3.parent.mkdir(parents=True)
    python3.write_text(f"#!/bin/sh\necho {system}\n")
    python3.chmod(0o755)
    monkeypatch.setattr(bootstrap, "ROOT", tmp_path)

    python, preference = bootstrap.python_for_uv(settings).split()

    chosen = system if preference == "only-system" else python
    assert (python, preference) in ((str(python3), "only-system"), ("3.12", "only-managed"))
    assert chosen in minors()
    missing = [n for n, package in vm_packages(chosen).items() if not installable(package, chosen)]
    assert missing == []


def test_debian_12_uses_its_own_python_and_ubuntu_2204_a_managed_one() -> None:
    assert IMAGES["debian-12"].system_python in minors()
    assert IMAGES["ubuntu-2204"].system_python not in minors()
