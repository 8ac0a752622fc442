"""Every laptop command line the README shows parses with the real options."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
COMMAND = re.compile(
    r"^uv run kgg "
    r"((?:upload|status|pull|runs|tensorboard|start|stop|ssh|submit|sweep|cancel)\b[^#\n]*)",
    re.M,
)


def _readme_commands() -> list[str]:
    if not README.is_file():
        return []
    return [match.strip() for match in COMMAND.findall(README.read_text())]


@pytest.mark.parametrize("command", _readme_commands() or ["status"])
def test_readme_command_parses(command: str, parser: argparse.ArgumentParser) -> None:
    args = parser.parse_args(shlex.split(command))
    assert args.command == command.split()[0]
    assert callable(args.func)
