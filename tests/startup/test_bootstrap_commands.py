"""bootstrap.py's command table: what the startup script and the idle unit call is in it, and a
call that does not fit gets one line and exit 2."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kgg.startup.bootstrap import COMMANDS, EXIT_USAGE

ROOT = Path(__file__).resolve().parents[2]


def bootstrap(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "KGG_ROOT": str(tmp_path)}
    return subprocess.run(
        [sys.executable, str(ROOT / "kgg/startup/bootstrap.py"), *args],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_every_command_the_script_and_units_call_is_in_the_table() -> None:
    sources = [
        ROOT / "kgg/startup/startup.sh.j2",
        ROOT / "kgg/agent/templates/kgg-idle-check.service.j2",
    ]
    called = {
        word
        for path in sources
        for word in re.findall(r"\bbootstrap(?:\.py)? ([a-z][a-z-]+)", path.read_text())
    }
    assert called and called <= set(COMMANDS)


def test_an_unknown_command_gets_one_line_and_exit_2(tmp_path: Path) -> None:
    result = bootstrap(tmp_path, "reboot-everything")

    assert result.returncode == EXIT_USAGE == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("bootstrap.py: unknown command 'reboot-everything'; one of preflight")
    assert not (tmp_path / "var").exists()  # nothing ran, not even the log


@pytest.mark.parametrize("args", [["fetch", "https://x"], ["wait-for", "10"], ["preflight", "x"]])
def test_a_command_with_the_wrong_arguments_gets_one_line_and_exit_2(
    tmp_path: Path, args: list[str]
) -> None:
    result = bootstrap(tmp_path, *args)

    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"bootstrap.py: {args[0]} takes ")


def test_no_command_lists_them_all(tmp_path: Path) -> None:
    result = bootstrap(tmp_path)

    assert result.returncode == 2
    for name, command in COMMANDS.items():
        assert f"bootstrap.py {name} {command.usage}".rstrip() in result.stderr
