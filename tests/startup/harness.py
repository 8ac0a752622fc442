"""A fake VM for the rendered startup script: a temporary root (KGG_ROOT), a fake metadata server
and GCS (served by a `curl` stub from files), and stub commands on PATH that record their calls
and can be told to fail. A "boot" is one run of the script with bash.

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

from infra.settings import StackSettings
from infra.stack_config import settings_for_stack
from startup.render import render_startup_script

METADATA_URL = "http://metadata.test/computeMetadata/v1"
GCS_API_URL = "http://gcs.test/storage/v1"
GCS_UPLOAD_URL = "http://gcs.test/upload/storage/v1"
SECRET_MANAGER_URL = "http://secrets.test/v1"
PASSWORD_SECRET = "projects/123456/secrets/kgg-dev-abc123-jupyter-password"
BUCKET = "kgg-test-bucket"
RUN_ID = "run-20261127-abc123"
PASSWORD_HASH = "argon2:$argon2id$v=19$m=10240,t=10,p=8$c2FsdA$aGFzaA"
EXTERNAL_IP = "203.0.113.10"
KERNEL = "5.15.0-1070-gcp"
FINGERPRINT = "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01"

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
    "chown": 'if __should_fail "$@"; then exit 1; fi\nexit 0\n',
    "update-initramfs": "exit 0\n",
    "shutdown": 'touch "${STATE}/shutdown"\n',
    "reboot": 'touch "${STATE}/reboot"\n',
    "uname": '[[ "${1:-}" == -r ]] && exec cat "${STATE}/kernel"\nexec /usr/bin/uname "$@"\n',
    "id": '[[ -f "${STATE}/user-${2:-}" ]]\n',
    "useradd": 'touch "${STATE}/user-${!#}"\n',
    "runuser": 'while [[ $# -gt 0 && "$1" != -- ]]; do shift; done\nshift\nexec "$@"\n',
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
    "openssl": r"""case "${1:-}" in
  req)
    while [[ $# -gt 0 ]]; do
      case "$1" in
        -keyout) echo "TEST KEY" >"$2"; shift ;;
        -out) echo "TEST CERT" >"$2"; shift ;;
      esac
      shift
    done ;;
  x509) echo "sha256 Fingerprint=__FINGERPRINT__" ;;
  *) exit 1 ;;
esac
""",
    # The metadata server and GCS, from files: stubs/metadata/<path>, stubs/gcs/<object>.
    # Uploads are also kept in order under stubs/uploads/ to check the status at every step.
    "curl": r"""if __should_fail "$@"; then
  sleep "$(cat "${STATE}/curl-fail-seconds" 2>/dev/null || echo 0)"
  echo "curl: (7) Failed to connect to gcs.test port 80 after 0 ms: Couldn't connect to server" >&2
  exit 7
fi
out="" write="" data="" url=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    -o) out="$2"; shift ;;
    -w) write="$2"; shift ;;
    --data-binary) data="${2#@}"; shift ;;
    -H | -X | --max-time) shift ;;
    http*) url="$1" ;;
  esac
  shift
done
emit() { if [[ -n "${out}" ]]; then cat "$1" >"${out}"; else cat "$1"; fi; }
decode() { printf '%b' "${1//%/\\x}"; }
path="${url%%\?*}"
query="${url#*\?}"
case "${url}" in
  __METADATA__/*)
    file="${STUBS}/metadata/${path#__METADATA__/}"
    [[ -f "${file}" ]] || { echo "curl: (22) 404" >&2; exit 22; }
    emit "${file}" ;;
  __UPLOAD__/b/*)
    name="$(decode "${query##*name=}")"
    mkdir -p "$(dirname "${STUBS}/gcs/${name}")" "${STUBS}/uploads"
    cp "${data}" "${STUBS}/gcs/${name}"
    cp "${data}" "${STUBS}/uploads/$(date +%s%N)-$(basename "${name}")" ;;
  __SECRETS__/*:access)
    # Secret Manager: stubs/secrets/<secret>/versions/<version> holds the payload.
    file="${STUBS}/secrets/${path#__SECRETS__/}"
    file="${file%:access}"
    [[ -f "${file}" ]] || { echo "curl: (22) The requested URL returned error: 403" >&2; exit 22; }
    printf '{"name": "%s", "payload": {"data": "%s"}}\n' "${path#__SECRETS__/}" \
      "$(base64 -w0 "${file}")" >"${out:-/dev/stdout}" ;;
  __API__/b/*)
    name="$(decode "${path#*/o/}")"
    [[ -f "${STUBS}/gcs/${name}" ]] || { echo "curl: (22) 404" >&2; exit 22; }
    emit "${STUBS}/gcs/${name}" ;;
  https://127.0.0.1:*)
    [[ -f "${STATE}/active-kgg-jupyter.service" ]] || exit 7
    [[ -z "${write}" ]] || printf 403 ;;
  https://files.pythonhosted.org/*)
    emit "${STUBS}/files/uv.whl" ;;
  *) echo "curl stub: unexpected URL ${url}" >&2; exit 6 ;;
esac
""",
    # Installed as the VM's uv (so the pinned download is skipped): `uv sync` creates the venv
    # with a python stub that answers the TF GPU check, the data wait, training and idle-check.
    "uv": r"""if [[ "${1:-}" == --version ]]; then echo "uv 0.13.9 (stub)"; exit 0; fi
if __should_fail "$@"; then echo "error: stub uv failure" >&2; exit 2; fi
[[ "${1:-}" == cache ]] && exit 0
env | grep -E '^UV_' | sort >"${STATE}/uv-env"
mkdir -p "${UV_PROJECT_ENVIRONMENT}/bin"
cp "${STUBS}/venv-python" "${UV_PROJECT_ENVIRONMENT}/bin/python"
cp "${STUBS}/venv-python" "${UV_PROJECT_ENVIRONMENT}/bin/jupyter"
chmod +x "${UV_PROJECT_ENVIRONMENT}/bin/python" "${UV_PROJECT_ENVIRONMENT}/bin/jupyter"
""",
    "venv-python": r"""if __should_fail "$@"; then echo "stub python failure" >&2; exit 1; fi
case "$*" in
  *"import tensorflow"*) echo "TF log line" >&2; cat "${STATE}/tf-gpus" 2>/dev/null || echo 1 ;;
  *"-m workload train"*)
    echo "epoch 1/1"
    if [[ -f "${STATE}/train-sleep" ]]; then sleep "$(cat "${STATE}/train-sleep")"; fi
    exit "$(cat "${STATE}/train-rc" 2>/dev/null || echo 0)" ;;
  *"-m startup wait-for-data"*)
    if [[ -f "${STATE}/wait-sleep" ]]; then sleep "$(cat "${STATE}/wait-sleep")"; fi
    exit "$(cat "${STATE}/wait-rc" 2>/dev/null || echo 0)" ;;
  *"-m startup idle-check"*)
    echo "stub idle reason"
    exit "$(cat "${STATE}/idle-rc" 2>/dev/null || echo 10)" ;;
  *) exit 0 ;;
esac
""",
}

STUB_COMMANDS = tuple(name for name in _STUBS if name not in {"uv", "venv-python"})


def settings_for(**overrides: Any) -> StackSettings:
    """The dev stack with a firewall range (the script does not depend on it) and overrides."""
    return settings_for_stack("dev", {"allowedSourceRanges": ["203.0.113.7/32"], **overrides})


def workload_archive(notebook: str = '{"cells": []}\n') -> bytes:
    """A small code archive with the layout infra/archive.py produces."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, text in {
            "pyproject.toml": "[project]\nname = 'keras-gpu-gcp'\n",
            "uv.lock": "version = 1\n",
            "startup/__init__.py": "",
            "workload/__init__.py": "",
            "workload/notebooks/walkthrough.ipynb": notebook,
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
        archive = workload_archive()
        self.archive_sha256 = hashlib.sha256(archive).hexdigest()
        object_name = f"code/workload-{self.archive_sha256[:16]}.tar.gz"
        self.put_gcs(object_name, archive)
        self.put_secret(PASSWORD_SECRET, PASSWORD_HASH)
        self.set_metadata(
            {
                "instance/attributes/kgg-bucket": BUCKET,
                "instance/attributes/kgg-workload-object": object_name,
                "instance/attributes/kgg-workload-sha256": self.archive_sha256,
                "instance/attributes/kgg-jupyter-password-secret": PASSWORD_SECRET,
                "instance/attributes/kgg-run-id": RUN_ID,
                "instance/network-interfaces/0/access-configs/0/external-ip": EXTERNAL_IP,
                "instance/name": "kgg-dev-vm",
                "instance/zone": "projects/123456/zones/us-central1-a",
                "instance/service-accounts/default/token": json.dumps(
                    {"access_token": "test-token", "expires_in": 3599}
                ),
            }
        )

    def _install_stubs(self) -> None:
        replacements = {
            "__STUBS__": str(self.stubs),
            "__METADATA__": METADATA_URL,
            "__UPLOAD__": GCS_UPLOAD_URL,
            "__SECRETS__": SECRET_MANAGER_URL,
            "__API__": GCS_API_URL,
            "__FINGERPRINT__": FINGERPRINT,
        }
        for name, body in _STUBS.items():
            text = _PRELUDE + body
            for key, value in replacements.items():
                text = text.replace(key, value)
            target = self.stubs / name if name == "venv-python" else self.bin / name
            target.write_text(text)
            target.chmod(0o755)
        uv = self.root / "opt/keras-gpu-gcp/bin/uv"
        uv.parent.mkdir(parents=True, exist_ok=True)
        (self.bin / "uv").rename(uv)

    # --- the fake cloud ---------------------------------------------------------------------
    def set_metadata(self, values: Mapping[str, str]) -> None:
        for path, value in values.items():
            file = self.stubs / "metadata" / path
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_text(value)

    def put_secret(self, secret: str, value: str, version: str = "latest") -> None:
        """A Secret Manager secret version only the VM's account can read (here: anyone)."""
        file = self.stubs / "secrets" / secret / "versions" / version
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(value)

    def put_gcs(self, name: str, data: bytes) -> None:
        file = self.stubs / "gcs" / name
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(data)

    def status(self) -> dict[str, Any]:
        """The status document as last uploaded to gs://<bucket>/status/startup.json."""
        return json.loads((self.stubs / "gcs/status/startup.json").read_text())

    def status_history(self) -> list[dict[str, Any]]:
        uploads = sorted((self.stubs / "uploads").glob("*-startup.json"))
        return [json.loads(path.read_text()) for path in uploads]

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

    def clear_calls(self) -> None:
        (self.stubs / "calls.log").unlink(missing_ok=True)
        self.state.joinpath("reboot").unlink(missing_ok=True)

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
            "KGG_METADATA_URL": METADATA_URL,
            "KGG_GCS_API_URL": GCS_API_URL,
            "KGG_GCS_UPLOAD_URL": GCS_UPLOAD_URL,
            "KGG_SECRET_MANAGER_URL": SECRET_MANAGER_URL,
            "KGG_RETRY_ATTEMPTS": "3",
            "KGG_RETRY_BASE_SECONDS": "0",
            "KGG_DLVM_DRIVER_WAIT_SECONDS": "0",
            "KGG_JUPYTER_START_SECONDS": "0",
        }

    def start(self, *args: str) -> subprocess.Popen[str]:
        """The script in the background, in its own process group (like a systemd unit)."""
        return subprocess.Popen(
            ["bash", str(self.script), *args],
            env=self.env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )

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

    def apt_installed(self) -> list[str]:
        return [arg for call in self.calls("apt-get") if "install" in call for arg in call[1:]]
