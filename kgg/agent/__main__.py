"""`python -m kgg.agent COMMAND`: the VM agent, run from the Python env by the startup script
(boot) and by the units it installs (the rest). The wiring lives here: `from_vm` builds the
`Agent` (kgg/agent/agent.py, a leaf) from the VM's metadata, settings and services."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime

from kgg.agent.agent import Agent
from kgg.common.vm_runtime import (
    LOG_TAG,
    CloudError,
    Endpoints,
    Metadata,
    configure_logging,
    read_secret,
)

EXIT_FAILED = 1
EXIT_USAGE = 64


def from_vm(*, budget_shared: bool) -> Agent:
    """The agent on the VM itself. The boot shares the startup script's upload budget; the
    services have their own."""
    from kgg.agent.cloud import Bucket, Instance, read_password_hash
    from kgg.agent.config import load_settings, paths_from_environment
    from kgg.agent.jupyter import jupyter_answers
    from kgg.agent.status import StatusReporter
    from kgg.agent.system import System

    paths = paths_from_environment()
    configure_logging(paths.log)
    endpoints = Endpoints.from_environment()
    metadata = Metadata(endpoints.metadata)
    instance = Instance.read(metadata)
    status = StatusReporter(
        paths.status,
        Bucket(instance.bucket),
        budget_file=paths.upload_budget if budget_shared else None,
    )
    return Agent(
        paths=paths,
        settings=load_settings(paths),
        system=System(),
        status=status,
        metadata=metadata,
        endpoints=endpoints,
        instance=instance,
        read_password_hash=lambda secret: read_password_hash(endpoints, metadata, secret),
        jupyter_answers=jupyter_answers,
        read_webhook=lambda secret: read_secret(endpoints, metadata, secret, "the webhook URL"),
    )


def _boot(args: argparse.Namespace) -> int:
    from kgg.agent.boot import boot

    return boot(from_vm(budget_shared=True))


def _training_job(args: argparse.Namespace) -> int:
    from kgg.agent.training import DATA_POLL_SECONDS, training_job

    poll = float(os.environ.get("KGG_DATA_POLL_SECONDS", DATA_POLL_SECONDS))
    return training_job(from_vm(budget_shared=False), poll_seconds=poll)


def _refresh_password(args: argparse.Namespace) -> int:
    from kgg.agent.jupyter import refresh_password

    refresh_password(from_vm(budget_shared=False))
    return 0


def _idle_check(args: argparse.Namespace) -> int:
    """Decides without the metadata server if it must: a VM whose metadata or bucket is broken
    must still stop when idle."""
    import logging

    from kgg.agent.config import load_settings, paths_from_environment
    from kgg.agent.idle import idle_check
    from kgg.agent.stop import stop_vm
    from kgg.agent.system import System

    paths = paths_from_environment()
    configure_logging(paths.log)
    log = logging.getLogger(LOG_TAG)
    system = System()

    def stop(detail: str) -> bool:
        try:
            agent = from_vm(budget_shared=False)
        except CloudError as error:  # no metadata: a VM made on its own can still power off
            log.warning("stopping without the metadata server: %s", error)
            system.power_off(f"keras-gpu-gcp: {detail}")
            return True
        return stop_vm(agent, detail)

    idle_check(
        paths=paths,
        settings=load_settings(paths),
        system=system,
        stop=stop,
        log=log,
        now=datetime.now(UTC),
    )
    return 0


def _workspace(args: argparse.Namespace) -> int:
    """As the notebook user: the workspace to or from the bucket (kgg/agent/workspace.py)."""
    import time
    from pathlib import Path

    from kgg.agent.cloud import Instance
    from kgg.agent.config import paths_from_environment
    from kgg.agent.workspace import prepare, restore, sync

    paths = paths_from_environment()
    if args.action == "prepare":
        walkthrough = Path(args.walkthrough) if args.walkthrough else None
        for note in prepare(paths.workspace, walkthrough):
            print(f"workspace: {note}")
        return 0
    url = Instance.read(Metadata(Endpoints.from_environment().metadata)).workspace_url
    if url is None:
        print("keras-gpu-gcp: no kgg-workspace-prefix in the metadata: nothing to do")
        return 0
    if args.action == "restore":
        report = restore(paths.workspace, url)
        for note in report.notes:
            print(f"workspace: {note}")
        kept = f"; {len(report.kept)} local file(s) kept over the bucket's" if report.kept else ""
        bound = "; stopped at its size bound" if report.unfinished else ""
        print(f"workspace: {report.restored} file(s) restored from {url}{kept}{bound}")
        return 0
    if not paths.workspace_restored.exists():
        print("workspace: not restored at this boot yet: nothing synced")
        return 0
    deadline = time.monotonic() + args.deadline if args.deadline else None
    print(f"workspace: {sync(paths.workspace, url, deadline).summary()}")
    return 0


def _log_sync(args: argparse.Namespace) -> int:
    """The logs to the bucket every few seconds until SIGTERM (kgg-log-sync.service)."""
    from kgg.agent.cost import CostTicker
    from kgg.agent.logsync import LogMirror, log_objects, sync_loop

    agent = from_vm(budget_shared=False)
    ticker = CostTicker(agent)
    mirror = LogMirror(agent.instance.bucket, log_objects(agent.paths, agent.instance.run_id))
    try:
        sync_loop(mirror, also=ticker)
    finally:
        ticker(force=True)  # the VM stopping: its last minute counts
    return 0


COMMANDS = {
    "boot": (_boot, "the boot steps after the Python env (the startup script runs it)"),
    "training-job": (_training_job, "the training service"),
    "idle-check": (_idle_check, "stop the VM when idle (the idle timer)"),
    "refresh-password": (_refresh_password, "restart JupyterLab when its password changed"),
    "log-sync": (_log_sync, "the logs and the cost ledger to the bucket (kgg-log-sync)"),
    "workspace": (_workspace, "as the notebook user: the workspace to or from the bucket"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kgg.agent", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (handler, help_text) in COMMANDS.items():
        command = commands.add_parser(name, help=help_text)
        command.set_defaults(handler=handler)
        if name == "workspace":
            command.add_argument("action", choices=("prepare", "restore", "sync"))
            command.add_argument("--deadline", type=float, help="seconds a sync may take")
            command.add_argument(
                "--walkthrough", help="prepare: the notebook to copy in once (if missing)"
            )
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
