"""A Debian 12 root that looks to the startup script like GCE's `debian-12` image, built once with
debootstrap and cached under `.cache/boot/` (git-ignored), keyed by everything that goes into it.

What GCE's image has and the script uses is real (systemd, apt, curl, openssl, python3, the cloud
kernel package). Only three things stand in for what cannot exist in a container:
- `google_metadata_script_runner` and its unit: fetch `startup-script` from the metadata server
  and run it as root at every boot, as GCE's guest agent does;
- `nvidia-smi`: one Tesla T4, once a module that DKMS really built is "loaded" at boot (the host
  kernel cannot load it; `kgg-test-gpu.service` marks it loaded when the build exists);
- the host's CA bundle is trusted, for machines whose outgoing HTTPS a local proxy re-signs.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

from kgg.infra.stack_config import PROJECT_ROOT

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# What GCE's debian-12 image brings that the startup script relies on, and systemd to boot it.
PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "curl", "ca-certificates", "openssl", "python3", "gnupg",
    "kmod", "iproute2", "procps", "sudo", "initramfs-tools", "linux-image-cloud-amd64",
    "openssh-server",  # for its host keys; ssh.service is masked: the root shares the host network
)  # fmt: skip
MASKED_UNITS = ("ssh.service", "ssh.socket")
CACHE = PROJECT_ROOT / ".cache" / "boot"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# metadata.google.internal inside the root: a loopback address of its own on the shared network.
METADATA_ADDRESS = "127.77.0.1"
RUNS_LOG = "var/log/kgg-test/startup-runs.log"

_RUNNER = r"""#!/bin/bash
# Test image stand-in for GCE's google_metadata_script_runner: the startup-script attribute, run as
# root. Each run's exit status and duration go to /__RUNS_LOG__ for the tests.
set -u
script="$(mktemp)"
started="$(date +%s)"
if curl -fsS --retry 3 -H 'Metadata-Flavor: Google' -o "${script}" \
  http://metadata.google.internal/computeMetadata/v1/instance/attributes/startup-script; then
  chmod 0700 "${script}"
  "${script}"
  rc=$?
else
  rc=254
fi
echo "startup-script exit status ${rc}"
mkdir -p "$(dirname /__RUNS_LOG__)"
echo "exit=${rc} seconds=$(($(date +%s) - started))" >>/__RUNS_LOG__
rm -f "${script}"
"""

_STARTUP_UNIT = """[Unit]
Description=Google Compute Engine Startup Scripts (test image stand-in)
Wants=network-online.target
After=network-online.target kgg-test-gpu.service

[Service]
Type=oneshot
ExecStart=/usr/bin/google_metadata_script_runner startup
KillMode=process
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
"""

_NVIDIA_SMI = r"""#!/bin/bash
# Test image stand-in (no GPU here): one Tesla T4 once kgg-test-gpu.service found the nvidia
# module that DKMS built; before that, what the real nvidia-smi says without a driver.
if [[ ! -e /run/kgg-test/nvidia-loaded ]]; then
  echo "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver." >&2
  exit 9
fi
if [[ "$*" == *--query-gpu=name* ]]; then echo "Tesla T4"; else echo "Tesla T4 (stand-in)"; fi
"""

_GPU_UNIT = """[Unit]
Description=Test image: the kernel loads the nvidia module DKMS built for the newest kernel
DefaultDependencies=no
Before=google-startup-scripts.service

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'newest=$(ls -1 /lib/modules | sort -V | tail -n 1); \
  if ls /lib/modules/"$newest"/updates/dkms/nvidia-current.ko* >/dev/null 2>&1; then \
  mkdir -p /run/kgg-test && touch /run/kgg-test/nvidia-loaded; fi'

[Install]
WantedBy=multi-user.target
"""

GUEST_FILES: dict[str, tuple[int, str]] = {
    "usr/bin/google_metadata_script_runner": (0o755, _RUNNER.replace("/__RUNS_LOG__", RUNS_LOG)),
    "etc/systemd/system/google-startup-scripts.service": (0o644, _STARTUP_UNIT),
    "usr/local/bin/nvidia-smi": (0o755, _NVIDIA_SMI),
    "etc/systemd/system/kgg-test-gpu.service": (0o644, _GPU_UNIT),
    "etc/hosts": (
        0o644,
        f"127.0.0.1 localhost\n::1 localhost\n{METADATA_ADDRESS} metadata.google.internal\n",
    ),
    # Trusted like the host's own roots; update-ca-certificates keeps it through upgrades.
    "usr/local/share/ca-certificates/kgg-host-bundle.crt": (0o644, ""),
}
ENABLED_UNITS = ("google-startup-scripts.service", "kgg-test-gpu.service")


def image_key() -> str:
    """Changes whenever the root would come out differently."""
    recipe = {
        "suite": SUITE,
        "mirror": MIRROR,
        "packages": PACKAGES,
        "files": GUEST_FILES,
        "units": ENABLED_UNITS,
        "masked": MASKED_UNITS,
        "host_ca": hashlib.sha256(HOST_CA_BUNDLE.read_bytes()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def build_image(cache: Path = CACHE) -> Path:
    """The cached root, built first when missing (about 2 minutes)."""
    root = cache / f"debian-12-{image_key()}"
    if (root / ".kgg-image-complete").exists():
        return root
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE,
         str(partial), MIRROR],
        check=True, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    for relative, (mode, text) in GUEST_FILES.items():
        target = partial / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)
    shutil.copyfile(HOST_CA_BUNDLE, partial / "usr/local/share/ca-certificates/kgg-host-bundle.crt")
    subprocess.run(
        ["chroot", str(partial), "update-ca-certificates"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    wants = partial / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    for unit in ENABLED_UNITS:
        (wants / unit).symlink_to(f"/etc/systemd/system/{unit}")
    for unit in MASKED_UNITS:
        (partial / "etc/systemd/system" / unit).unlink(missing_ok=True)
        (partial / "etc/systemd/system" / unit).symlink_to("/dev/null")
    (partial / "var/log/journal").mkdir(parents=True, exist_ok=True)  # a persistent journal
    (partial / ".kgg-image-complete").touch()
    shutil.rmtree(root, ignore_errors=True)
    partial.rename(root)
    return root
