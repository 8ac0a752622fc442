"""The commands the agent runs as root (systemctl, useradd, openssl, nvidia-smi, shutdown, ...),
through one object so the tests can replace it and record what was run."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

Completed = subprocess.CompletedProcess[str]


class CommandError(RuntimeError):
    """A command failed: the message names it and carries its own error output."""

    def __init__(self, argv: Sequence[str], result: Completed) -> None:
        output = (result.stderr or result.stdout or "").strip().splitlines()[-3:]
        detail = " ".join(output) or "no output"
        super().__init__(f"`{' '.join(argv)}` failed with exit {result.returncode}: {detail}")
        self.result = result


class System:
    def run(
        self, argv: Sequence[str], *, check: bool = True, timeout: float | None = 600
    ) -> Completed:
        result = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise CommandError(argv, result)
        return result

    def popen(self, argv: Sequence[str], cwd: Path | None = None) -> subprocess.Popen[str]:
        """A long-running command whose output (both streams, by line) the caller reads."""
        return subprocess.Popen(
            list(argv), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            bufsize=1,
        )  # fmt: skip

    # --- systemd --------------------------------------------------------------------------
    def systemctl(self, *args: str, check: bool = True) -> Completed:
        return self.run(["systemctl", *args], check=check)

    def is_active(self, unit: str) -> bool:
        return self.systemctl("is-active", "--quiet", unit, check=False).returncode == 0

    def active_state(self, unit: str) -> str:
        result = self.systemctl("show", "-p", "ActiveState", "--value", unit, check=False)
        return result.stdout.strip()

    def power_off(self, reason: str) -> None:
        self.run(["shutdown", "-h", "now", reason], check=False)

    # --- users and files ------------------------------------------------------------------
    def user_exists(self, name: str) -> bool:
        return self.run(["id", "-u", name], check=False).returncode == 0

    def create_user(self, name: str, home: Path) -> None:
        self.run(["useradd", "--system", "--create-home", "--home-dir", str(home),
                  "--shell", "/bin/bash", name])  # fmt: skip

    def chown(self, owner: str, *paths: Path) -> None:
        """Never through a link: a notebook user must not point root at files of its choosing."""
        self.run(["chown", "--no-dereference", owner, *map(str, paths)])

    # --- the GPU --------------------------------------------------------------------------
    def gpu_names(self) -> list[str]:
        result = self.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], check=False)
        return [line.strip() for line in result.stdout.splitlines() if line.strip()]
