"""Render the startup script and the JupyterLab config from the stack settings.

Pure functions of the settings (and of the files the script carries): the same inputs give the
same bytes, so `pulumi preview` shows a change to the VM's `startup-script` metadata only when
something that matters changed. Every value that reaches the shell goes through the `q` filter
(shlex.quote); the settings the VM agent reads go as JSON (json.dumps) in a quoted heredoc;
anything the cloud assigns or that is secret (bucket, archive, password secret, run id, IP) is
read at boot from the metadata server and never rendered.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from jinja2 import Environment

from kgg.agent import units
from kgg.agent.config import Paths, VmSettings
from kgg.common.contract import BOOTSTRAP_PY, IDLE_TIMER, IDLE_UNIT
from kgg.startup.bootstrap import UV_SYNC_FLAGS


class GpuSpec(Protocol):
    """The catalogue facts about the stack's GPU that the script needs."""

    @property
    def display_name(self) -> str: ...
    @property
    def driver_branch(self) -> str: ...
    @property
    def tensorflow_build(self) -> str: ...


class StackSettings(Protocol):
    """What the renderer reads from a stack's settings (kgg.infra.settings.StackSettings has it):
    startup/ depends on these names only, never on infra/, which imports this module."""

    @property
    def gpu(self) -> GpuSpec: ...
    @property
    def gpus_attached(self) -> int: ...
    @property
    def gpu_type(self) -> str: ...
    @property
    def machine_type(self) -> str: ...
    @property
    def image(self) -> str: ...
    @property
    def spot(self) -> bool: ...
    @property
    def notebook_port(self) -> int: ...
    @property
    def idle_shutdown_minutes(self) -> int: ...
    @property
    def shutdown_after_training(self) -> bool: ...
    @property
    def run_training(self) -> bool: ...
    @property
    def data_path(self) -> str: ...
    @property
    def training_args(self) -> Sequence[str]: ...
    @property
    def estimated_hourly_usd(self) -> float | None: ...
    @property
    def notebook_access(self) -> str: ...


TEMPLATES = Path(__file__).resolve().parent

# uv installs the Python env on the VM. Pinned to a release and to the SHA-256 of its wheel on
# PyPI (manylinux x86_64: every GCE GPU machine family is x86_64); no pip or venv needed on the
# image, the script unzips the binary. https://pypi.org/project/uv/0.13.9/#files
UV_VERSION = "0.13.9"
UV_WHEEL_URL = (
    "https://files.pythonhosted.org/packages/3d/aa/"
    "26d64642d808de4a652579ef950d7cd2d37f080a8babf9c67c6b75fc4c3f/"
    "uv-0.13.9-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
)
UV_WHEEL_SHA256 = "d7f459fe4fd247d830351c75686d3996ace3c6f3f728eb0e85a30b7ada0cef19"

# The CPython minors every wheel the VM installs from uv.lock exists for (TensorFlow 2.21: cp311 to
# cp313); pyproject.toml's requires-python says the same. The image's python3 is used when it is
# one of them (Debian 12: 3.11), else uv downloads MANAGED_PYTHON (Ubuntu 22.04 ships 3.10).
PYTHON_MIN = "3.11"
PYTHON_MAX = "3.13"
MANAGED_PYTHON = "3.12"

# The idle timer's period: a VM powers off at most this long after its idle window has passed.
IDLE_CHECK_SECONDS = 300

# Kernels idle this long are shut down by Jupyter when idle shutdown is off; with idle shutdown
# on, they are culled after the same idle window that powers the VM off.
DEFAULT_CULL_MINUTES = 120
# Files the script carries verbatim (quoted heredocs), and the words that end them.
PROJECT = TEMPLATES.parents[1]  # the checkout (or the archive on the VM)
CARRIED = {
    "bootstrap_py": (PROJECT / "kgg/startup/bootstrap.py", "KGG_BOOTSTRAP"),
    "documents_py": (PROJECT / "kgg/common/documents.py", "KGG_DOCUMENTS"),
    "vm_runtime_py": (PROJECT / "kgg/common/vm_runtime.py", "KGG_RUNTIME"),
    "contract_py": (PROJECT / "kgg/common/contract.py", "KGG_CONTRACT"),
}


def shell_quote(value: Any) -> str:
    """One shell word for any value; booleans as the words true/false."""
    if isinstance(value, bool):
        value = "true" if value else "false"
    return shlex.quote(str(value))


def _environment() -> Environment:
    env = units.jinja(TEMPLATES)
    env.filters["q"] = shell_quote
    return env


def vm_settings(
    settings: StackSettings, *, idle_check_seconds: int = IDLE_CHECK_SECONDS
) -> VmSettings:
    """What the VM agent reads from /etc/keras-gpu-gcp/settings.json."""
    gpu = settings.gpu
    return VmSettings(
        gpu_name=gpu.display_name,
        expected_gpus=settings.gpus_attached,
        machine_type=settings.machine_type,
        spot=settings.spot,
        tensorflow_build=gpu.tensorflow_build,
        notebook_port=settings.notebook_port,
        idle_shutdown_minutes=settings.idle_shutdown_minutes,
        idle_check_seconds=idle_check_seconds,
        cull_idle_seconds=(settings.idle_shutdown_minutes or DEFAULT_CULL_MINUTES) * 60,
        shutdown_after_training=settings.shutdown_after_training,
        run_training=settings.run_training,
        data_path=settings.data_path,
        training_args=tuple(settings.training_args),
        python_min=PYTHON_MIN,
        python_max=PYTHON_MAX,
        managed_python=MANAGED_PYTHON,
        hourly_usd=settings.estimated_hourly_usd,
        notebook_access=settings.notebook_access,
    )


def _carried(key: str) -> str:
    path, delimiter = CARRIED[key]
    text = path.read_text()
    if delimiter in text:
        raise ValueError(f"{path} must not contain {delimiter}, which ends its heredoc")
    return text if text.endswith("\n") else text + "\n"


def template_context(
    settings: StackSettings, *, idle_check_seconds: int = IDLE_CHECK_SECONDS
) -> dict[str, Any]:
    gpu = settings.gpu
    on_vm = Paths(Path("/"))
    idle_unit = {
        "bootstrap": BOOTSTRAP_PY,
        "state": on_vm.on_vm(on_vm.state),
        "home": on_vm.on_vm(on_vm.notebook_home),
    }
    return {
        "gpu_type": settings.gpu_type,
        "gpu_name": gpu.display_name,
        "expected_gpus": settings.gpus_attached,
        "machine_type": settings.machine_type,
        "driver_branch": gpu.driver_branch,
        "image": settings.image,
        "spot": settings.spot,
        "idle_shutdown_minutes": settings.idle_shutdown_minutes,
        "uv_version": UV_VERSION,
        "uv_wheel_url": UV_WHEEL_URL,
        "uv_wheel_sha256": UV_WHEEL_SHA256,
        "uv_sync_flags": shlex.join(UV_SYNC_FLAGS),
        # JSON from json.dumps, in a quoted heredoc: no shell or JSON quoting by hand.
        "vm_settings_json": json.dumps(
            vm_settings(settings, idle_check_seconds=idle_check_seconds).to_json(),
            sort_keys=True,
        ),
        "idle_service": units.render(f"{IDLE_UNIT}.j2", **idle_unit),
        "idle_timer": units.render(f"{IDLE_TIMER}.j2", period=idle_check_seconds),
        **{key: _carried(key) for key in CARRIED},
    }


def render_startup_script(
    settings: StackSettings, *, idle_check_seconds: int = IDLE_CHECK_SECONDS
) -> str:
    """The bash startup script for the VM's `startup-script` metadata. `idle_check_seconds`
    shortens the idle timer for the real-boot tests; stacks always get IDLE_CHECK_SECONDS."""
    context = template_context(settings, idle_check_seconds=idle_check_seconds)
    text = _environment().get_template("startup.sh.j2").render(context)
    return text if text.endswith("\n") else text + "\n"
