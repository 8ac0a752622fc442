"""What the VM agent knows: the stack settings the startup script was rendered with (written to
`/etc/keras-gpu-gcp/settings.json` by the script) and the VM's file layout, with the `KGG_ROOT`
seam the tests use (the endpoints are kgg/common/vm_runtime.py's)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

# The units' names are the contract's (`kgg status` reports two of them); the agent's modules
# import them from here.
from kgg.common.contract import (  # noqa: F401
    APP_DIR,
    CONF_DIR,
    IDLE_TIMER,
    IDLE_UNIT,
    JUPYTER_UNIT,
    LOG_SYNC_UNIT,
    PASSWORD_REFRESH_TIMER,
    PASSWORD_REFRESH_UNIT,
    RUNTIME_DIR,
    STATE_DIR,
    TRAINING_UNIT,
    VENV_DIR,
    WORKSPACE_FINAL_UNIT,
    WORKSPACE_SYNC_TIMER,
    WORKSPACE_SYNC_UNIT,
)

NOTEBOOK_USER = "jupyter"
STARTUP_UNIT = "google-startup-scripts.service"
# JupyterLab's runtime directory (/run/<name>: its data, runtime and IPython folders), which
# systemd makes for the unit's user at each start and empties at each stop.
JUPYTER_RUNTIME_DIRECTORY = "kgg-jupyter"


@dataclass(frozen=True)
class VmSettings:
    """The stack settings that matter on the VM (kgg/startup/render.py `vm_settings`)."""

    gpu_name: str
    expected_gpus: int
    machine_type: str
    spot: bool
    tensorflow_build: str
    notebook_port: int
    idle_shutdown_minutes: int
    idle_check_seconds: int
    cull_idle_seconds: int
    shutdown_after_training: bool
    run_training: bool
    data_path: str
    training_args: tuple[str, ...]
    # The CPython minors every locked wheel exists for, and uv's Python when the image's is not
    # one of them (kgg/startup/bootstrap.py python-for-uv).
    python_min: str
    python_max: str
    managed_python: str
    # The catalogue's $/h for this VM (on-demand or spot; None where it has no price): the cost
    # ledger's estimate (kgg/agent/cost.py).
    hourly_usd: float | None = None
    notebook_access: str = "public"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VmSettings:
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        values["training_args"] = tuple(values.get("training_args", ()))
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)} | {
            "training_args": list(self.training_args)
        }


@dataclass(frozen=True)
class Paths:
    """The VM's files, under `root` (`/` on a VM, a temporary folder in tests)."""

    root: Path = Path("/")

    def _at(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    @property
    def state(self) -> Path:
        return self._at(STATE_DIR)

    @property
    def markers(self) -> Path:
        return self.state / "markers"

    @property
    def log(self) -> Path:
        return self.state / "startup.log"

    @property
    def status(self) -> Path:
        return self.state / "status.json"

    @property
    def upload_budget(self) -> Path:
        """Seconds failed status uploads cost this run of the startup script (it resets it)."""
        return self.state / "status-upload-seconds"

    @property
    def job_state(self) -> Path:
        return self.state / "training-job.json"

    @property
    def training_log(self) -> Path:
        return self.state / "training.log"

    @property
    def cost_ledger(self) -> Path:
        return self.state / "cost.json"

    @property
    def boot_id(self) -> Path:
        return self._at("proc/sys/kernel/random/boot_id")

    @property
    def uptime(self) -> Path:
        return self._at("proc/uptime")

    @property
    def ssh_host_keys(self) -> Path:
        return self._at("etc/ssh")

    @property
    def app(self) -> Path:
        return self._at(APP_DIR)

    @property
    def venv_python(self) -> Path:
        return self._at(f"{VENV_DIR}/bin/python")

    @property
    def venv_bin(self) -> Path:
        return self._at(f"{VENV_DIR}/bin")

    @property
    def conf(self) -> Path:
        return self._at(CONF_DIR)

    @property
    def settings(self) -> Path:
        return self.conf / "settings.json"

    @property
    def jupyter(self) -> Path:
        return self.conf / "jupyter"

    @property
    def jupyter_config(self) -> Path:
        return self.jupyter / "jupyter_server_config.py"

    @property
    def jupyter_config_dir(self) -> Path:
        """JUPYTER_CONFIG_DIR of the server: root's and empty, so no config of the user's runs."""
        return self.jupyter / "config"

    @property
    def password_hash(self) -> Path:
        return self.jupyter / "password.hash"

    @property
    def tls_cert(self) -> Path:
        return self.jupyter / "tls" / "jupyter.crt"

    @property
    def tls_key(self) -> Path:
        return self.jupyter / "tls" / "jupyter.key"

    @property
    def api_token(self) -> Path:
        """The Jupyter API token the idle check uses, next to the config that reads it."""
        return self.jupyter / "api-token"

    @property
    def jupyter_env(self) -> Path:
        return self.conf / "jupyter.env"

    @property
    def jupyter_runtime(self) -> Path:
        return self._at(f"run/{JUPYTER_RUNTIME_DIRECTORY}")

    @property
    def workspace_restored(self) -> Path:
        """Made at each boot once the workspace came back from the bucket (/run is empty at
        boot): only then may a sync mirror local deletions to the bucket."""
        return self._at(f"{RUNTIME_DIR}/workspace-restored")

    @property
    def units(self) -> Path:
        return self._at("etc/systemd/system")

    @property
    def notebook_home(self) -> Path:
        return self._at(f"home/{NOTEBOOK_USER}")

    @property
    def workspace(self) -> Path:
        return self.notebook_home / "work"

    def marker(self, name: str) -> Path:
        return self.markers / name

    def on_vm(self, path: Path) -> str:
        """The path as the VM sees it (for unit files and configs written under `root`)."""
        return "/" + path.relative_to(self.root).as_posix()


def expected_gpus(settings: VmSettings) -> int:
    """The real-boot suite lowers it (KGG_EXPECTED_GPUS): it has no GPU."""
    return int(os.environ.get("KGG_EXPECTED_GPUS", settings.expected_gpus))


def load_settings(paths: Paths) -> VmSettings:
    return VmSettings.from_json(json.loads(paths.settings.read_text()))


def paths_from_environment() -> Paths:
    return Paths(Path(os.environ.get("KGG_ROOT") or "/"))
