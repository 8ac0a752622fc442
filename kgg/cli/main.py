"""`kgg ...`: the parser built from the command modules, and the one place a user's error
becomes one line and an exit code.

Importing this module never imports TensorFlow: the laptop commands must run without it. Each
command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from kgg.cli.commands import (
    demo,
    group,
    init,
    logs,
    remote,
    results,
    status,
    tensorboard,
    upload,
    vertex,
)
from kgg.common.contract import CLI_NAME
from kgg.common.errors import UserError
from kgg.job import cli as job

EXIT_CRASH = 1  # a bug or an unforeseen failure: its traceback is on stderr

# Each has register(subparsers) and run(args), in the order `kgg --help` lists them.
COMMANDS = (init, job, demo, upload, status, results, logs, tensorboard, group, remote, vertex)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Every command's parser, on `subparsers`."""
    for command in COMMANDS:
        command.register(subparsers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=CLI_NAME,
        description="VGG transfer learning on an image folder (local or gs://), and its tools.",
    )
    add_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def dispatch(args: argparse.Namespace) -> int:
    """Runs a parsed command; an error the user fixes is one line on stderr and its exit code."""
    try:
        return int(args.func(args) or 0)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code


def run(argv: Sequence[str] | None = None) -> int:
    return dispatch(build_parser().parse_args(argv))


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The `kgg` command (and `python -m kgg`, which the VM runs)."""
    try:
        code = run(argv)
    except Exception:
        # TensorFlow's native threads can keep a crashed process from exiting (a real boot's
        # job hung 15 minutes after its traceback, and the VM stayed up for it): report, leave.
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_CRASH)
    sys.exit(code)
