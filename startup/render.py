"""Render the startup script and the JupyterLab config from the stack settings.

Pure functions of the settings: the same settings give the same bytes, so `pulumi preview` shows
a change to the VM's `startup-script` metadata only when a setting that matters changed. Every
value that reaches the shell goes through the `q` filter (shlex.quote); anything the cloud
assigns or that is secret (bucket, archive, password hash, run id, IP) is read by the script
from the metadata server at boot and never rendered.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

if TYPE_CHECKING:
    from infra.settings import StackSettings

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
# The heredoc that carries the Jupyter config inside the startup script.
JUPYTER_CONFIG_DELIMITER = "KGG_JUPYTER_CONFIG"


def shell_quote(value: Any) -> str:
    """One shell word for any value; booleans as the words true/false."""
    if isinstance(value, bool):
        value = "true" if value else "false"
    return shlex.quote(str(value))


def python_literal(value: Any) -> str:
    """A Python literal for the Jupyter config (JSON strings and numbers are valid Python)."""
    if isinstance(value, bool):
        return "True" if value else "False"
    return json.dumps(value)


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["q"] = shell_quote
    env.filters["py"] = python_literal
    return env


def cull_idle_minutes(settings: StackSettings) -> int:
    return settings.idle_shutdown_minutes or DEFAULT_CULL_MINUTES


def render_jupyter_config(settings: StackSettings) -> str:
    """`jupyter_server_config.py` as the VM runs it (paths are relative to the file itself)."""
    text = (
        _environment()
        .get_template("jupyter_server_config.py.j2")
        .render(
            notebook_port=settings.notebook_port,
            cull_idle_seconds=cull_idle_minutes(settings) * 60,
        )
    )
    return text if text.endswith("\n") else text + "\n"


def template_context(
    settings: StackSettings, *, idle_check_seconds: int = IDLE_CHECK_SECONDS
) -> dict[str, Any]:
    gpu = settings.gpu
    jupyter_config = render_jupyter_config(settings)
    if JUPYTER_CONFIG_DELIMITER in jupyter_config:
        raise ValueError(f"the Jupyter config must not contain {JUPYTER_CONFIG_DELIMITER}")
    return {
        "gpu_type": settings.gpu_type,
        "gpu_name": gpu.display_name,
        "expected_gpus": settings.gpus_attached,
        "machine_type": settings.machine_type,
        "driver_branch": gpu.driver_branch,
        "tensorflow_build": gpu.tensorflow_build,
        "image": settings.image,
        "spot": settings.spot,
        "notebook_port": settings.notebook_port,
        "idle_shutdown_minutes": settings.idle_shutdown_minutes,
        "idle_check_seconds": idle_check_seconds,
        "shutdown_after_training": settings.shutdown_after_training,
        "run_training": settings.run_training,
        "data_path": settings.data_path,
        "training_args": settings.training_args,
        "uv_version": UV_VERSION,
        "uv_wheel_url": UV_WHEEL_URL,
        "uv_wheel_sha256": UV_WHEEL_SHA256,
        "python_min": PYTHON_MIN,
        "python_max": PYTHON_MAX,
        "managed_python": MANAGED_PYTHON,
        "jupyter_config": jupyter_config,
        "jupyter_config_delimiter": JUPYTER_CONFIG_DELIMITER,
    }


def render_startup_script(
    settings: StackSettings, *, idle_check_seconds: int = IDLE_CHECK_SECONDS
) -> str:
    """The bash startup script for the VM's `startup-script` metadata. `idle_check_seconds`
    shortens the idle timer for the real-boot tests; stacks always get IDLE_CHECK_SECONDS."""
    context = template_context(settings, idle_check_seconds=idle_check_seconds)
    text = _environment().get_template("startup.sh.j2").render(context)
    return text if text.endswith("\n") else text + "\n"
