"""A fake VM for the rendered startup script's own part (preflight, the driver, the Python env,
the hand-over to the agent): a temporary root (KGG_ROOT), stub system commands on PATH that record
their calls and can be told to fail, and the Google endpoints on a real loopback HTTP server
(tests/fake_cloud.py) that bootstrap.py reaches with python3, as on a VM. A "boot" is one run of
the script with bash. What the agent does after the hand-over is tested in tests/agent.

Stub state lives in files under `stubs/state` so it survives from one boot to the next the way
the VM's disk does; `reboot()` drops what a real reboot drops (running services) and loads the
driver when its packages were installed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kgg.infra.settings import StackSettings
from kgg.infra.stack_config import settings_for_stack
from kgg.startup.render import render_startup_script
from tests.fake_cloud import FakeCloud

BUCKET = "kgg-test-bucket"
RUN_ID = "run-20261127-abc123"
PASSWORD_HASH = "argon2:$argon2id$v=19$m=10240,t=10,p=8$c2FsdA$aGFzaA"
# The secret the program declares for the test stack (tests/iam.py): the VM may read it.
PASSWORD_SECRET = "projects/123456789012/secrets/kgg-dev-0a1b2c-jupyter-password"
EXTERNAL_IP = "203.0.113.10"
KERNEL = "5.15.0-1070-gcp"
STATUS = "status/startup.json"

# Every stub starts by recording its argv (one JSON line) and by checking the fail list:
# stubs/fail/<command> holds lines "<count> <substring>"; a call whose argv contains the
# substring fails while the count lasts (count "*" = always).
_PRELUDE = r"""#!/usr/bin/env bash
set -u
STUBS="__STUBS__"
STATE="${STUBS}/state"
__record() {
  local IFS=$'\x1f'
  printf '%s\n' "${0##*/}${*:+${IFS}$*}" >>"${STUBS}/calls.log"
}
__should_fail() {
  local rules="${STUBS}/fail/${0##*/}" joined="$*" tmp count pattern hit=1
  [[ -f "${rules}" ]] || return 1
  tmp="$(mktemp)"
  while read -r count pattern; do
    if ((hit == 1)) && [[ "${joined}" == *"${pattern}"* ]] &&
      [[ "${count}" == "*" || "${count}" -gt 0 ]]; then
      hit=0
      [[ "${count}" == "*" ]] || count=$((count - 1))
    fi
    echo "${count} ${pattern}" >>"${tmp}"
  done <"${rules}"
  mv "${tmp}" "${rules}"
  return "${hit}"
}
__record "$@"
"""

_STUBS: dict[str, str] = {
    "logger": "exit 0\n",
    "cloud-init": "exit 0\n",
    "sync": "exit 0\n",
    "dmesg": 'echo "NVRM: test kernel log line"\n',
    "update-initramfs": "exit 0\n",
    "shutdown": 'touch "${STATE}/shutdown"\n',
    "reboot": 'touch "${STATE}/reboot"\n',
    "uname": '[[ "${1:-}" == -r ]] && exec cat "${STATE}/kernel"\nexec /usr/bin/uname "$@"\n',
    "nvidia-smi": r"""if __should_fail "$@" || [[ ! -f "${STATE}/driver-loaded" ]]; then
  echo "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver" >&2
  exit 9
fi
if [[ "$*" == *--query-gpu=name* ]]; then
  for _ in $(seq "$(cat "${STATE}/gpus" 2>/dev/null || echo 1)"); do echo "Tesla T4"; done
fi
exit 0
""",
    "modprobe": r"""if [[ -f "${STATE}/modules-for-running-kernel" ]]; then
  touch "${STATE}/driver-loaded"; exit 0
fi
echo "modprobe: FATAL: Module nvidia not found" >&2
exit 1
""",
    "apt-cache": r"""pkg="${!#}"
grep -qxF "${pkg}" "${STATE}/apt-available" 2>/dev/null
""",
    "apt-get": r"""if __should_fail "$@"; then echo "E: stub apt-get failure" >&2; exit 100; fi
for arg in "$@"; do
  if [[ "${arg}" == "linux-modules-nvidia-"*"-server-$(cat "${STATE}/kernel")" ]]; then
    touch "${STATE}/modules-for-running-kernel"
  fi
  if [[ "${arg}" == nvidia-headless-no-dkms-* || "${arg}" == nvidia-kernel-dkms ]]; then
    touch "${STATE}/driver-packages"
  fi
done
exit 0
""",
    "apt-mark": "exit 0\n",
    "systemctl": r"""if __should_fail "$@"; then exit 1; fi
args=()
for arg in "$@"; do [[ "${arg}" == --* ]] || args+=("${arg}"); done
case "${args[0]:-}" in
  is-active) [[ -f "${STATE}/active-${args[1]}" ]] ;;
  start | restart) touch "${STATE}/active-${args[1]}" ;;
  enable) if [[ "$*" == *--now* ]]; then touch "${STATE}/active-${args[1]}"; fi ;;
  stop | disable) rm -f "${STATE}/active-${args[1]}" ;;
  show)
    if [[ -f "${STATE}/activating-${args[-1]}" ]]; then echo activating; else echo inactive; fi ;;
  *) exit 0 ;;
esac
""",
    # Installed as the VM's uv (so the pinned download is skipped): `uv sync` creates the venv
    # with a python stub that records the hand-over to the agent and answers `-V`.
    "uv": r"""if [[ "${1:-}" == --version ]]; then echo "uv 0.13.9 (stub)"; exit 0; fi
if __should_fail "$@"; then echo "error: stub uv failure" >&2; exit 2; fi
[[ "${1:-}" == cache ]] && exit 0
env | grep -E '^UV_' | sort >"${STATE}/uv-env"
mkdir -p "${UV_PROJECT_ENVIRONMENT}/bin"
cp "${STUBS}/venv-python" "${UV_PROJECT_ENVIRONMENT}/bin/python"
cp "${STUBS}/venv-python" "${UV_PROJECT_ENVIRONMENT}/bin/jupyter"
chmod +x "${UV_PROJECT_ENVIRONMENT}/bin/python" "${UV_PROJECT_ENVIRONMENT}/bin/jupyter"
""",
    "venv-python": r"""if [[ "${1:-}" == -V ]]; then echo "Python 3.11.9"; exit 0; fi
exit "$(cat "${STATE}/agent-rc" 2>/dev/null || echo 0)"
""",
}
STUB_COMMANDS = tuple(name for name in _STUBS if name not in {"uv", "venv-python"})


def settings_for(**overrides: Any) -> StackSettings:
    """The dev stack with a firewall range (the script does not depend on it) and overrides."""
    return settings_for_stack("dev", {"allowedSourceRanges": ["203.0.113.7/32"], **overrides})


def heredoc(text: str, delimiter: str) -> str:
    """The body of the script's quoted heredoc that ends with `delimiter`."""
    start = text.index(f"<<'{delimiter}'\n") + len(f"<<'{delimiter}'\n")
    return text[start : text.index(f"\n{delimiter}\n", start) + 1]


def workload_archive(notebook: str = '{"cells": []}\n') -> bytes:
    """A small code archive with the layout kgg/infra/archive.py produces."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, text in {
            "pyproject.toml": "[project]\nname = 'keras-gpu-gcp'\n",
            "uv.lock": "version = 1\n",
            "kgg/startup/__init__.py": "",
            "kgg/agent/__init__.py": "",
            "kgg/__init__.py": "",
            "kgg/agent/notebooks/walkthrough.ipynb": notebook,
        }.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@dataclass
class Boot:
    returncode: int
    stdout: str
    stderr: str


class FakeVm:
    """Use as a context manager: it serves the fake cloud while open."""

    def __init__(self, base: Path, settings: StackSettings, os_release: str | None = None):
        self.base = base
        self.root = base / "root"
        self.stubs = base / "stubs"
        self.state = self.stubs / "state"
        self.bin = self.stubs / "bin"
        self.script = base / "startup.sh"
        self.script.write_text(render_startup_script(settings))
        for folder in (self.root / "etc", self.state, self.bin, self.stubs / "fail"):
            folder.mkdir(parents=True, exist_ok=True)
        (self.root / "etc/os-release").write_text(
            os_release or 'PRETTY_NAME="Ubuntu 22.04.5 LTS"\nID=ubuntu\nVERSION_ID="22.04"\n'
        )
        (self.state / "kernel").write_text(KERNEL + "\n")
        self._install_stubs()
        self.cloud = FakeCloud()
        archive = workload_archive()
        self.archive_sha256 = hashlib.sha256(archive).hexdigest()
        self.archive_object = f"code/workload-{self.archive_sha256[:16]}.tar.gz"
        self.cloud.objects[self.archive_object] = archive
        self.cloud.put_secret(PASSWORD_SECRET, PASSWORD_HASH)
        self.set_metadata(
            {
                "instance/attributes/kgg-bucket": BUCKET,
                "instance/attributes/kgg-workload-object": self.archive_object,
                "instance/attributes/kgg-workload-sha256": self.archive_sha256,
                "instance/attributes/kgg-jupyter-password-secret": PASSWORD_SECRET,
                "instance/attributes/kgg-run-id": RUN_ID,
                "instance/network-interfaces/0/access-configs/0/external-ip": EXTERNAL_IP,
                "instance/name": "kgg-dev-vm",
                "instance/zone": "projects/123456/zones/us-central1-a",
            }
        )

    def __enter__(self) -> FakeVm:
        self.cloud.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cloud.__exit__(*exc)

    def _install_stubs(self) -> None:
        for name, body in _STUBS.items():
            text = (_PRELUDE + body).replace("__STUBS__", str(self.stubs))
            target = self.stubs / name if name == "venv-python" else self.bin / name
            target.write_text(text)
            target.chmod(0o755)
        uv = self.root / "opt/keras-gpu-gcp/bin/uv"
        uv.parent.mkdir(parents=True, exist_ok=True)
        (self.bin / "uv").rename(uv)

    # --- the fake cloud ---------------------------------------------------------------------
    def set_metadata(self, values: Mapping[str, str]) -> None:
        self.cloud.metadata.update(values)

    def status(self) -> dict[str, Any]:
        """The status document as last uploaded to gs://<bucket>/status/startup.json."""
        return self.cloud.object_json(STATUS)

    def status_history(self) -> list[dict[str, Any]]:
        return list(self.cloud.uploads_of(STATUS))

    def local_status(self) -> dict[str, Any]:
        return json.loads((self.root / "var/lib/keras-gpu-gcp/status.json").read_text())

    # --- the fake machine -------------------------------------------------------------------
    def fail(self, command: str, pattern: str = "", times: int | str = "*") -> None:
        """Make the next `times` calls of COMMAND whose argv contains PATTERN fail."""
        with (self.stubs / "fail" / command).open("a") as rules:
            rules.write(f"{times} {pattern}\n")

    def heal(self, command: str) -> None:
        (self.stubs / "fail" / command).unlink(missing_ok=True)

    def flag(self, name: str, value: str = "") -> None:
        (self.state / name).write_text(value)

    def flagged(self, name: str) -> bool:
        return (self.state / name).exists()

    def calls(self, command: str | None = None) -> list[list[str]]:
        log = self.stubs / "calls.log"
        if not log.exists():
            return []
        calls = [line.split("\x1f") for line in log.read_text().splitlines()]
        return [call for call in calls if command is None or call[0] == command]

    def handed_over(self) -> bool:
        """The script ended by running the agent's boot from the env."""
        return ["python", "-m", "kgg.agent", "boot"] in self.calls("python")

    def clear_calls(self) -> None:
        (self.stubs / "calls.log").unlink(missing_ok=True)
        self.state.joinpath("reboot").unlink(missing_ok=True)
        self.cloud.requests.clear()

    def reboot(self) -> None:
        """What a real reboot does: services stop; installed driver packages load."""
        for active in self.state.glob("active-*"):
            active.unlink()
        if self.flagged("driver-packages"):
            self.flag("driver-loaded")
        self.clear_calls()

    def env(self) -> dict[str, str]:
        return {
            "PATH": f"{self.bin}:{os.environ['PATH']}",
            "HOME": str(self.base),
            "LANG": "C.UTF-8",
            "TMPDIR": str(self.base),
            "KGG_ROOT": str(self.root),
            **self.cloud.environment(),
            "KGG_UV_WHEEL_URL": self.cloud.file_url("uv.whl"),
            "KGG_RETRY_ATTEMPTS": "3",
            "KGG_RETRY_BASE_SECONDS": "0",
            "KGG_DLVM_DRIVER_WAIT_SECONDS": "0",
        }

    def run(self, *args: str, timeout: float = 60, env: Mapping[str, str] | None = None) -> Boot:
        result = subprocess.run(
            ["bash", str(self.script), *args],
            env=self.env() | dict(env or {}),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return Boot(result.returncode, result.stdout, result.stderr)

    def boot(self) -> Boot:
        return self.run()

    def run_bootstrap(self, *args: str) -> Boot:
        """The helper as the script (and the idle timer) runs it, from where the script put it."""
        result = subprocess.run(
            ["python3", str(self.root / "opt/keras-gpu-gcp/bootstrap/bootstrap.py"), *args],
            env=self.env() | {"BUCKET": BUCKET},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return Boot(result.returncode, result.stdout, result.stderr)

    def apt_installed(self) -> list[str]:
        return [arg for call in self.calls("apt-get") if "install" in call for arg in call[1:]]
