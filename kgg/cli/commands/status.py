"""`kgg status`: what the VM and the training run report (kgg/cli/status.py), with GCE's view."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC, datetime

from kgg.cli import gce, status
from kgg.cli.capacity import GroupState
from kgg.cli.stack import (
    StackValueError,
    add_bucket_option,
    add_group_option,
    resolve_bucket,
    resolve_group,
    stack_outputs,
)
from kgg.cli.vm import read_status_view
from kgg.common.contract import STATUS_OBJECT


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "status",
        help="what the VM and the training run report",
        description=(
            "Shows GCE's view of the VM (running, stopped, or waiting for capacity with the last "
            "error per zone), then the boot steps, GPUs, notebook URL and TLS fingerprint, and "
            f"the training progress, from gs://BUCKET/{STATUS_OBJECT} and the run's "
            "progress.json. Exit code 1 when something failed."
        ),
    )
    add_bucket_option(parser)
    add_group_option(parser)
    parser.add_argument("--watch", action="store_true", help="refresh until training ends or fails")
    parser.add_argument(
        "--interval", type=float, default=30.0, help="seconds between refreshes (default 30)"
    )
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=480.0,
        help="stop watching after this long (default 480; exit code 3)",
    )
    parser.set_defaults(func=run)


def _group_reader(args: argparse.Namespace) -> Callable[[], GroupState | None] | None:
    """What `status` shows of GCE's view: the group from --group or the stack, when there is one
    (the bucket's documents are worth showing without it)."""
    try:
        group = gce.GroupRef.parse(resolve_group(args.group))
    except StackValueError as error:
        if args.group is None and args.bucket:
            return None  # a bucket named by hand, and no stack here: the bucket view alone
        print(f"(no VM view from GCE: {error})", file=sys.stderr)
        return None
    try:
        compute = gce.Compute.from_environment()
    except gce.GceError as error:
        print(f"(no VM view from GCE: {error})", file=sys.stderr)
        return None
    return lambda: read_status_view(compute, group)


def run(args: argparse.Namespace) -> int:
    bucket = resolve_bucket(args.bucket)
    source = f"gs://{bucket}/{STATUS_OBJECT}"
    fetch_group = _group_reader(args)
    if args.watch:
        try:
            return status.watch(
                lambda: status.fetch_documents(bucket),
                sys.stdout,
                interval=args.interval,
                max_seconds=args.max_minutes * 60,
                clear=sys.stdout.isatty(),
                source=source,
                fetch_group=fetch_group,
            )
        except KeyboardInterrupt:
            print("\nstopped watching; the VM carries on")
            return 130
    startup, progress = status.fetch_documents(bucket)
    group = None
    try:
        group = fetch_group() if fetch_group else None
    except gce.GceError as error:
        # The bucket's view still helps; GCE's is missing for a reason the user can fix.
        print(f"(no VM view from GCE: {error})", file=sys.stderr)
    print(status.render_status(startup, progress, datetime.now(UTC), source, group))
    if args.bucket is None:  # the stack's Vertex AI jobs still queued or running
        from kgg.cli import vertex_runs

        vertex_runs.print_section(stack_outputs, only_active=True)
    return status.WATCH_EXIT_FAILED if status.outcome(startup, progress) == "failed" else 0
