"""One test VM: a copy of the cached root, booted with `systemd-nspawn -b` (real systemd as PID 1)
on the host's network, as GCE boots its image: a reboot ends the container with exit 133, a power
off with 0, and the next `boot()` is the VM's next boot."""

from __future__ import annotations

import contextlib
import re
import secrets
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from tests.startup.boot.image import RUNS_LOG

EXIT_POWEROFF = 0
EXIT_REBOOT = 133  # systemd-nspawn's exit status when the guest rebooted
T = TypeVar("T")


@dataclass(frozen=True)
class StartupRun:
    """One run of the startup script, as the test image's runner logged it."""

    exit_status: int
    seconds: int


class Machine:
    def __init__(self, image: Path, root: Path, console: Path) -> None:
        self.root = root
        self.console = console
        subprocess.run(["cp", "-a", "--reflink=auto", str(image), str(root)], check=True)
        # A fixed machine id keeps one journal across boots, as a VM's disk does.
        (root / "etc/machine-id").write_text(secrets.token_hex(16) + "\n")
        self.process: subprocess.Popen[bytes] | None = None

    # --- what the VM is given ---------------------------------------------------------------
    def set_environment(self, values: Mapping[str, str]) -> None:
        """Environment for every unit of the next boot (the startup script and the units it
        writes): the endpoint seams of the fakes."""
        dropin = self.root / "etc/systemd/system.conf.d/kgg-test.conf"
        dropin.parent.mkdir(parents=True, exist_ok=True)
        pairs = " ".join(f'"{key}={value}"' for key, value in sorted(values.items()))
        dropin.write_text(f"[Manager]\nDefaultEnvironment={pairs}\n")

    # --- power --------------------------------------------------------------------------------
    def boot(self) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        self._clear_runs()
        with self.console.open("ab") as console:
            self.process = subprocess.Popen(
                ["systemd-nspawn", "--boot", "--register=no", "--keep-unit", "--quiet",
                 "--console=pipe", f"--directory={self.root}", "--machine=kgg-test-vm"],
                stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def wait_exit(self, timeout: float) -> int:
        """The container's exit status: EXIT_REBOOT, EXIT_POWEROFF, or a failure."""
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def reboot(self, timeout: float = 120) -> None:
        """`systemctl reboot` inside, then the next boot."""
        self.exec("systemctl", "reboot")
        assert self.wait_exit(timeout) == EXIT_REBOOT
        self.boot()

    def kill(self) -> None:
        if self.running():
            assert self.process is not None
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)

    def exec(self, *command: str) -> subprocess.CompletedProcess[str]:
        """A command in the running machine (its namespaces, as root)."""
        return subprocess.run(
            ["nsenter", f"--target={self._init_pid()}", "--mount", "--uts", "--ipc", "--pid",
             "--", *command],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    def _init_pid(self) -> int:
        assert self.process is not None and self.running()
        children = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(self.process.pid)],
            capture_output=True, text=True, check=False,
        ).stdout.split()  # fmt: skip
        assert children, "the machine has no init process"
        return int(children[0])

    # --- what the VM reports ------------------------------------------------------------------
    def startup_runs(self) -> list[StartupRun]:
        log = self.root / RUNS_LOG
        if not log.exists():
            return []
        found = re.findall(r"^exit=(\d+) seconds=(\d+)$", log.read_text(), re.M)
        return [StartupRun(int(rc), int(seconds)) for rc, seconds in found]

    def wait_startup_run(self, timeout: float) -> StartupRun:
        """The startup script's run of this boot, once it ended."""
        return wait_for(
            lambda: next(reversed(self.startup_runs()), None), timeout, "the startup run"
        )

    def _clear_runs(self) -> None:
        (self.root / RUNS_LOG).unlink(missing_ok=True)

    def journal(self, *args: str) -> str:
        return subprocess.run(
            ["journalctl", f"--directory={self.root}/var/log/journal", "--no-pager", *args],
            capture_output=True, text=True, check=False,
        ).stdout  # fmt: skip

    def disk_usage_bytes(self, *paths: str) -> int:
        """Bytes the paths take together (hard links counted once, as on the VM's disk)."""
        targets = [str(self.root / path) for path in paths] or [str(self.root)]
        output = subprocess.run(
            ["du", "-s", "-B1", "-c", *targets], capture_output=True, text=True, check=True
        ).stdout
        return int(output.strip().splitlines()[-1].split()[0])


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, every: float = 1.0) -> T:
    """Polls `probe` until it returns something other than None."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            value = probe()
            if value is not None:
                return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout:.0f}s")
        time.sleep(every)
