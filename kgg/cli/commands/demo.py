"""`kgg demo`: the local rehearsal (kgg/cli/demo.py), the job's train command on an emulator."""

from __future__ import annotations

import argparse

from kgg.job.config import RECIPES


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="local rehearsal: synthetic data in a GCS emulator, the real train command"
    )
    parser.add_argument("--keep", help="also copy the demo's results to this local folder")
    parser.add_argument("--recipe", choices=RECIPES, default="fast")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kgg.cli.demo import run_demo  # numpy, PIL and the emulator: only for the demo

    run_demo(args)
    return 0
