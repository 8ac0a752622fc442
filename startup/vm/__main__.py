"""`python -m startup.vm boot|training-job|idle-check|refresh-password`: the VM agent, run from the
Python env by the startup script (boot) and by the units it installs (the rest)."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime

from startup.vm.cloud import CloudError

EXIT_FAILED = 1
EXIT_USAGE = 64


def _boot(args: argparse.Namespace) -> int:
    from startup.vm.agent import from_vm
    from startup.vm.boot import boot

    return boot(from_vm(budget_shared=True))


def _training_job(args: argparse.Namespace) -> int:
    from startup.vm.agent import from_vm
    from startup.vm.training import DATA_POLL_SECONDS, training_job

    poll = float(os.environ.get("KGG_DATA_POLL_SECONDS", DATA_POLL_SECONDS))
    return training_job(from_vm(budget_shared=False), poll_seconds=poll)


def _refresh_password(args: argparse.Namespace) -> int:
    from startup.vm.agent import from_vm
    from startup.vm.jupyter import refresh_password

    refresh_password(from_vm(budget_shared=False))
    return 0


def _idle_check(args: argparse.Namespace) -> int:
    """Decides without the metadata server if it must: a VM whose metadata or bucket is broken
    must still power off when idle."""
    import logging

    from startup.vm.agent import LOG_TAG, configure_logging
    from startup.vm.cloud import Bucket, Instance, Metadata
    from startup.vm.config import Endpoints, load_settings, paths_from_environment
    from startup.vm.idle import idle_check
    from startup.vm.status import StatusReporter
    from startup.vm.system import System

    paths = paths_from_environment()
    configure_logging(paths)
    log = logging.getLogger(LOG_TAG)
    try:
        bucket: Bucket | None = Bucket(
            Instance.read(Metadata(Endpoints.from_environment().metadata, attempts=2)).bucket
        )
    except CloudError as error:
        log.warning("idle check without the bucket: %s", error)
        bucket = None
    idle_check(
        paths=paths,
        settings=load_settings(paths),
        system=System(),
        status=StatusReporter(paths.status, bucket),
        log=log,
        now=datetime.now(UTC),
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m startup.vm", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("boot", help="the boot steps after the Python env").set_defaults(
        handler=_boot
    )
    commands.add_parser("training-job", help="the training service").set_defaults(
        handler=_training_job
    )
    commands.add_parser("idle-check", help="power off when idle").set_defaults(handler=_idle_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except CloudError as error:
        print(f"keras-gpu-gcp: {error}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
