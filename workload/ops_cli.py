"""Laptop commands (upload, status, pull, runs): registered on the workload CLI.

They need only google-cloud-storage and tqdm, never TensorFlow, so each module is imported inside
its command.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

STACK_BUCKET_OUTPUT = "bucketName"
STACK_DATA_PATH_KEY = "dataPath"
PROJECT_ROOT = Path(__file__).resolve().parents[1]


class BucketNotFoundError(RuntimeError):
    """No --bucket and no Pulumi stack output to take it from."""


Runner = Callable[..., subprocess.CompletedProcess[str]]


def _pulumi(argv: list[str], run: Runner) -> subprocess.CompletedProcess[str]:
    """Runs the pulumi CLI in the project folder (where Pulumi.yaml is), output captured."""
    cwd = PROJECT_ROOT if (PROJECT_ROOT / "Pulumi.yaml").is_file() else None
    return run(["pulumi", *argv], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def resolve_bucket(
    explicit: str | None,
    which: Callable[[str], str | None] = shutil.which,
    run: Runner = subprocess.run,
) -> str:
    """`--bucket`, else the current Pulumi stack's `bucketName` output."""
    if explicit:
        return explicit.removeprefix("gs://").strip("/")
    fix = "pass --bucket BUCKET (the bucket name `pulumi up` printed as bucketName)"
    if which("pulumi") is None:
        raise BucketNotFoundError(f"no --bucket given and the pulumi CLI is not installed; {fix}")
    try:
        result = _pulumi(["stack", "output", STACK_BUCKET_OUTPUT], run)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise BucketNotFoundError(
            f"`pulumi stack output {STACK_BUCKET_OUTPUT}` failed ({error}); {fix}"
        ) from error
    bucket = result.stdout.strip()
    if result.returncode != 0 or not bucket:
        detail = result.stderr.strip().splitlines()[-1:] or ["no output"]
        raise BucketNotFoundError(
            f"`pulumi stack output {STACK_BUCKET_OUTPUT}` gave no bucket ({detail[0]}); "
            f"select the stack (`pulumi stack select dev`) after `pulumi up`, or {fix}"
        )
    return bucket


def stack_data_path(
    which: Callable[[str], str | None] = shutil.which, run: Runner = subprocess.run
) -> str | None:
    """The stack's `dataPath` when it was set (`pulumi config get` fails for a default)."""
    if which("pulumi") is None:
        return None
    try:
        result = _pulumi(["config", "get", STACK_DATA_PATH_KEY], run)
    except (OSError, subprocess.TimeoutExpired):
        return None
    value = result.stdout.strip()
    return value if result.returncode == 0 and value else None


def _add_bucket(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bucket",
        help="bucket name (default: the Pulumi stack output bucketName)",
    )


def _upload(args: argparse.Namespace) -> int:
    from workload import upload

    bucket = resolve_bucket(args.bucket)
    # With the bucket from the stack, the prefix must be the stack's dataPath too, or the VM
    # waits for data that went elsewhere.
    prefix = args.prefix or (None if args.bucket else stack_data_path()) or upload.DEFAULT_PREFIX
    report = upload.upload_dataset(
        args.local_dir,
        bucket,
        prefix=prefix,
        workers=args.workers,
        progress=not args.quiet,
        delete_extra=args.delete_extra,
    )
    print(upload.format_report(report))
    return 0


def _status(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from workload import status

    bucket = resolve_bucket(args.bucket)
    source = f"gs://{bucket}/{status.STATUS_KEY}"
    if args.watch:
        try:
            return status.watch(
                lambda: status.fetch_documents(bucket),
                sys.stdout,
                interval=args.interval,
                max_seconds=args.max_minutes * 60,
                clear=sys.stdout.isatty(),
                source=source,
            )
        except KeyboardInterrupt:
            print("\nstopped watching; the VM carries on")
            return 130
    startup, progress = status.fetch_documents(bucket)
    print(status.render_status(startup, progress, datetime.now(UTC), source))
    return status.WATCH_EXIT_FAILED if status.outcome(startup, progress) == "failed" else 0


def _pull(args: argparse.Namespace) -> int:
    from workload import results

    bucket = resolve_bucket(args.bucket)
    run_id, target, stats = results.pull_run(
        bucket, args.run, args.to, workers=args.workers, progress=not args.quiet
    )
    print(results.render_pull(run_id, target, stats))
    return 0


def _runs(args: argparse.Namespace) -> int:
    from workload import results, status, storage

    bucket = resolve_bucket(args.bucket)
    startup = status.parse_startup(storage.read_bytes(f"gs://{bucket}/{status.STATUS_KEY}"))
    current = startup.run_id if startup else None
    print(results.render_runs(results.list_runs(bucket), bucket, current))
    return 0


def _guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turns the errors a user can fix into one clear line on stderr and exit code 2."""

    def run(args: argparse.Namespace) -> int:
        from workload.results import RunNotFoundError
        from workload.storage import StorageError, UnsafeNameError
        from workload.upload import LayoutError

        try:
            return command(args)
        except (
            BucketNotFoundError,
            LayoutError,
            RunNotFoundError,
            StorageError,
            UnsafeNameError,
        ) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2

    run.__doc__ = command.__doc__
    return run


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Adds the laptop commands to the `python -m workload` parser."""
    from workload.upload import DEFAULT_PREFIX

    upload = subparsers.add_parser(
        "upload",
        help="upload a train/<class>/*.png folder to the bucket (resumable)",
        description=(
            "Uploads LOCAL_DIR/train/<class>/* and LOCAL_DIR/test/* to gs://BUCKET/PREFIX. Files "
            "already there with the same MD5 are skipped, so an interrupted upload is simply run "
            "again; the manifest that tells the VM the data is complete is written last."
        ),
    )
    upload.add_argument("local_dir", metavar="LOCAL_DIR", help="folder holding train/<class>/")
    _add_bucket(upload)
    upload.add_argument(
        "--prefix",
        help=(
            "prefix in the bucket; must match the stack's dataPath (default: the stack's dataPath "
            f"when --bucket is not given, else {DEFAULT_PREFIX})"
        ),
    )
    upload.add_argument("--workers", type=int, default=16, help="parallel uploads (default 16)")
    upload.add_argument("--quiet", action="store_true", help="no progress bar")
    upload.add_argument(
        "--delete-extra",
        action="store_true",
        help="delete objects under the prefix that are not in LOCAL_DIR (else only reported)",
    )
    upload.set_defaults(func=_guarded(_upload))

    status = subparsers.add_parser(
        "status",
        help="what the VM and the training run report",
        description=(
            "Shows the boot steps, GPUs, notebook URL and TLS fingerprint, and the training "
            "progress, from gs://BUCKET/status/startup.json and the run's progress.json. "
            "Exit code 1 when something failed."
        ),
    )
    _add_bucket(status)
    status.add_argument("--watch", action="store_true", help="refresh until training ends or fails")
    status.add_argument(
        "--interval", type=float, default=30.0, help="seconds between refreshes (default 30)"
    )
    status.add_argument(
        "--max-minutes",
        type=float,
        default=480.0,
        help="stop watching after this long (default 480; exit code 3)",
    )
    status.set_defaults(func=_guarded(_status))

    pull = subparsers.add_parser(
        "pull",
        help="download a run's results (model, metrics, plots, submission.csv)",
        description="Downloads gs://BUCKET/runs/RUN/ to DIR/RUN, skipping files already there.",
    )
    pull.add_argument("run", metavar="RUN", help="run id (see `runs`), or `latest`")
    pull.add_argument(
        "--to", metavar="DIR", default="runs", help="the run goes to DIR/RUN (default runs)"
    )
    _add_bucket(pull)
    pull.add_argument("--workers", type=int, default=8, help="parallel downloads (default 8)")
    pull.add_argument("--quiet", action="store_true", help="no progress bar")
    pull.set_defaults(func=_guarded(_pull))

    runs = subparsers.add_parser(
        "runs",
        help="list the training runs with their metrics",
        description="Lists gs://BUCKET/runs/* with state, micro-F1 and accuracy.",
    )
    _add_bucket(runs)
    runs.set_defaults(func=_guarded(_runs))
