"""`python -m workload ...`: the job's commands (workload/job/cli.py), the laptop's
(workload/ops/cli.py) and `demo`, which rehearses both on this machine.

Importing this module never imports TensorFlow: the laptop commands must run without it. Each
command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from workload.job import cli as job_cli
from workload.job.config import RECIPES
from workload.ops import cli as ops_cli


def _demo(args: argparse.Namespace) -> int:
    from workload.demo import run_demo

    run_demo(args)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m workload",
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)
