"""A real OpenSSH server on 127.0.0.1 and a stub `gcloud` whose IAP tunnel on stdin/stdout is a
plain relay to it: everything between the user's `ssh` and the VM's sshd is real except IAP."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.prerequisites import unavailable

SSHD = "/usr/sbin/sshd"  # sshd refuses to start from a relative path
REQUIRED_ENV = "KGG_REQUIRE_SSHD"  # CI: .ci/run installs openssh-server, so the test must run

# gcloud as the proxy calls it: records its argv, and for `compute start-iap-tunnel VM PORT
# --listen-on-stdin` relays stdin/stdout to the sshd the test started.
GCLOUD = """#!{python}
import json, os, socket, sys, threading
with open({log!r}, "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1:3] == ["compute", "start-iap-tunnel"] and "--listen-on-stdin" in sys.argv:
    sock = socket.create_connection(("127.0.0.1", {port}))
    def upstream():
        while data := os.read(0, 65536):
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
    threading.Thread(target=upstream, daemon=True).start()
    while data := sock.recv(65536):
        os.write(1, data)
"""


def require_openssh() -> None:
    missing = [tool for tool in (SSHD, "ssh", "ssh-keygen") if shutil.which(tool) is None]
    if not missing:
        return
    unavailable(f"needs {', '.join(missing)} (apt install openssh-server openssh-client)",
                REQUIRED_ENV)  # fmt: skip


def keygen(path: Path) -> str:
    """A new ed25519 key pair at `path`; returns the public key's base64 blob."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)],
                   check=True, capture_output=True)  # fmt: skip
    return Path(f"{path}.pub").read_text().split()[1]


@dataclass
class Sshd:
    """sshd on `port`, admitting `client_key`; `restart(host_key)` is the VM recreated."""

    home: Path
    port: int = 0
    user: str = field(default_factory=getpass.getuser)
    process: subprocess.Popen[bytes] | None = None

    @property
    def client_key(self) -> Path:
        return self.home / "client_ed25519"

    def start(self, host_key: Path) -> None:
        self.stop()
        config = self.home / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
            f"PidFile {self.home / 'sshd.pid'}\nAuthorizedKeysFile {self.home / 'authorized'}\n"
            "StrictModes no\nUsePAM no\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
        )
        self.process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)],
                                        stderr=(self.home / "sshd.log").open("ab"))  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError((self.home / "sshd.log").read_text())
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("sshd did not listen within 20 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def start_sshd(home: Path, host_key: Path) -> Sshd:
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = Sshd(home, port)
    blob = keygen(server.client_key)
    (home / "authorized").write_text(f"ssh-ed25519 {blob}\n")
    server.start(host_key)
    return server


def install_gcloud(bin_dir: Path, log: Path, port: int) -> None:
    bin_dir.mkdir(exist_ok=True)
    stub = bin_dir / "gcloud"
    stub.write_text(GCLOUD.format(python=sys.executable, log=str(log), port=port))
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
