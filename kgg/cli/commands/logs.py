"""`kgg logs`: the VM's startup log or a run's training log, from the bucket (kgg/cli/logs.py)."""

from __future__ import annotations

import argparse
import sys

from kgg.cli import logs
from kgg.cli.stack import add_bucket_option, resolve_bucket


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "logs",
        help="print the VM's startup log or a run's training log (-f follows it)",
        description=(
            "Prints gs://BUCKET/logs/startup.log (`startup`) or gs://BUCKET/runs/RUN/train.log "
            "(`train`: the VM's current run; or a run id, `latest`, or SWEEP/TRIAL), which the VM "
            "or the Vertex AI job uploads every few seconds: also readable once the VM is "
            "stopped. With -f, prints what is new until the boot or the run ends (exit 0 done, "
            "1 failed)."
        ),
    )
    parser.add_argument(
        "which",
        nargs="?",
        default="train",
        metavar="startup|train|RUN",
        help="default: train; a sweep's trial: SWEEP/TRIAL",
    )
    parser.add_argument("-f", "--follow", action="store_true", help="follow until it ends")
    parser.add_argument(
        "--interval", type=float, default=5.0, help="seconds between polls with -f (default 5)"
    )
    add_bucket_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    source = logs.log_source(resolve_bucket(args.bucket), args.which)
    if not args.follow:
        return logs.print_log(source, sys.stdout)
    try:
        return logs.follow(source, sys.stdout, interval=args.interval)
    except KeyboardInterrupt:
        print("\nstopped following; the VM carries on")
        return 130
