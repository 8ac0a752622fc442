"""`python -m kgg.agent`: every command the units and the startup script run is there."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from kgg.agent.__main__ import COMMANDS

ROOT = Path(__file__).resolve().parents[2]


def test_every_command_a_unit_or_the_script_runs_exists() -> None:
    texts = [
        path.read_text()
        for room in ("kgg/startup", "kgg/agent")
        for path in (ROOT / room).rglob("*")
        if path.is_file() and path.suffix != ".pyc"
    ]
    called = {
        match for text in texts for match in re.findall(r"-m kgg\.agent (?:\"|')?([a-z-]+)", text)
    }
    called |= {"workspace"}  # stop.py builds it as a list
    assert called <= set(COMMANDS), called - set(COMMANDS)
    assert {"boot", "training-job", "idle-check", "refresh-password"} <= called


def test_the_entry_point_lists_its_commands() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kgg.agent", "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    for command in COMMANDS:
        assert command in result.stdout
