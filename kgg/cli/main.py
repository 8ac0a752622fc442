"""`kgg ...`: the job's commands (kgg/job/cli.py), the laptop's
(kgg/cli/commands.py) and `demo`, which rehearses both on this machine.

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

from kgg.cli import commands as ops_cli
from kgg.common.contract import CLI_NAME
from kgg.job import cli as job_cli
from kgg.job.config import RECIPES

EXIT_CRASH = 1  # a bug or an unforeseen failure: its traceback is on stderr


def _demo(args: argparse.Namespace) -> int:
    from kgg.cli.demo import run_demo

    run_demo(args)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=CLI_NAME,
        description="VGG transfer learning on an image folder (local or gs://), and its tools.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    job_cli.add_commands(subparsers)
    demo = subparsers.add_parser(
        "demo", help="local rehearsal: synthetic data in a GCS emulator, the real train command"
    )
    demo.add_argument("--keep", help="also copy the demo's results to this local folder")
    demo.add_argument("--recipe", choices=RECIPES, default="fast")
    demo.set_defaults(func=_demo)
    ops_cli.add_commands(subparsers)
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


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
