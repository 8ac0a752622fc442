"""Laptop commands (upload, status, pull, runs, logs, tensorboard, start, stop, ssh, ...) for
the CLI.

They need only google-cloud-storage (and the google-auth it brings, for Compute Engine) and tqdm,
never TensorFlow, so each module is imported inside its command.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kgg.cli.capacity import GroupState
    from kgg.cli.gce import Compute, GroupRef

STACK_BUCKET_OUTPUT = "bucketName"
STACK_GROUP_OUTPUT = "instanceGroup"
STACK_DATA_PATH_KEY = "dataPath"
PROJECT_ROOT = Path(__file__).resolve().parents[2]  # where Pulumi.yaml is


class StackValueError(RuntimeError):
    """No flag and no Pulumi stack output to take a value (bucket, group) from."""


Runner = Callable[..., subprocess.CompletedProcess[str]]


def _pulumi(argv: list[str], run: Runner) -> subprocess.CompletedProcess[str]:
    """Runs the pulumi CLI in the project folder (where Pulumi.yaml is), output captured."""
    cwd = PROJECT_ROOT if (PROJECT_ROOT / "Pulumi.yaml").is_file() else None
    return run(["pulumi", *argv], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def stack_output(
    output: str,
    flag: str,
    fix: str,
    which: Callable[[str], str | None] = shutil.which,
    run: Runner = subprocess.run,
) -> str:
    """The current Pulumi stack's `output`, for a command run without `flag`."""
    if which("pulumi") is None:
        raise StackValueError(f"no {flag} given and the pulumi CLI is not installed; {fix}")
    try:
        result = _pulumi(["stack", "output", output], run)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise StackValueError(f"`pulumi stack output {output}` failed ({error}); {fix}") from error
    value = result.stdout.strip()
    if result.returncode != 0 or not value:
        detail = result.stderr.strip().splitlines()[-1:] or ["no output"]
        raise StackValueError(
            f"`pulumi stack output {output}` gave nothing ({detail[0]}); "
            f"select the stack (`pulumi stack select dev`) after `pulumi up`, or {fix}"
        )
    return value


def resolve_bucket(
    explicit: str | None,
    which: Callable[[str], str | None] = shutil.which,
    run: Runner = subprocess.run,
) -> str:
    """`--bucket`, else the current Pulumi stack's `bucketName` output."""
    if explicit:
        return explicit.removeprefix("gs://").strip("/")
    fix = "pass --bucket BUCKET (the bucket name `pulumi up` printed as bucketName)"
    return stack_output(STACK_BUCKET_OUTPUT, "--bucket", fix, which, run)


def resolve_group(
    explicit: str | None,
    which: Callable[[str], str | None] = shutil.which,
    run: Runner = subprocess.run,
) -> str:
    """`--group`, else the current Pulumi stack's `instanceGroup` output."""
    if explicit:
        return explicit
    fix = (
        "pass --group projects/PROJECT/regions/REGION/instanceGroupManagers/NAME "
        "(what `pulumi up` printed as instanceGroup)"
    )
    return stack_output(STACK_GROUP_OUTPUT, "--group", fix, which, run)


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


def _add_group(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--group",
        help=(
            "the VM's group, projects/PROJECT/regions/REGION/instanceGroupManagers/NAME "
            "(default: the Pulumi stack output instanceGroup)"
        ),
    )


def _upload(args: argparse.Namespace) -> int:
    from kgg.cli import upload

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


def _group_reader(args: argparse.Namespace) -> Callable[[], GroupState | None] | None:
    """What `status` shows of GCE's view: the group from --group or the stack, when there is one
    (the bucket's documents are worth showing without it)."""
    from kgg.cli import gce

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


def read_group(compute: Compute, group: GroupRef) -> GroupState:
    """GCE's view of the VM's group: the group, its VMs, their errors, its template."""
    from datetime import UTC, datetime

    from kgg.cli.capacity import group_state

    described = compute.get_group(group)
    # A group made with versions[] may leave the top-level template field out.
    versions = described.get("versions") or [{}]
    template_url = described.get("instanceTemplate") or versions[0].get("instanceTemplate")
    template = compute.get_template(str(template_url or ""))
    labels = (template.get("properties") or {}).get("labels") or {}
    stack_labels = {key: labels[key] for key in ("app", "stack") if key in labels}
    return group_state(
        described,
        compute.list_managed_instances(group),
        compute.list_errors(group),
        template,
        datetime.now(UTC),
        per_instance=compute.list_per_instance_configs(group),
        labelled=compute.labelled_instances(group.project, stack_labels) if stack_labels else [],
    )


def read_status_view(compute: Compute, group: GroupRef) -> GroupState:
    """What `status` shows of GCE: the group, and the certificate fingerprint its running VM
    published (the guest attribute only a process on the VM can write)."""
    import dataclasses

    from kgg.cli.gce import GceError
    from kgg.cli.notebook_identity import TLS_QUERY, published_fingerprint

    state = read_group(compute, group)
    vm, notebook = state.running, state.notebook
    if notebook is None or notebook.url is None:
        return state
    if vm is None or not vm.name or not vm.zone:
        missing = "the VM is not running"
        return dataclasses.replace(state, notebook=dataclasses.replace(notebook, missing=missing))
    try:
        attributes = compute.guest_attributes(group.project, vm.zone, vm.name, TLS_QUERY)
    except GceError as error:
        missing = f"its guest attributes are not readable: {error}"
        return dataclasses.replace(state, notebook=dataclasses.replace(notebook, missing=missing))
    fingerprint = published_fingerprint(attributes)
    notebook = dataclasses.replace(
        notebook, tls_sha256=fingerprint, missing="" if fingerprint else "not yet"
    )
    return dataclasses.replace(state, notebook=notebook)


def _status(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from kgg.cli import status

    bucket = resolve_bucket(args.bucket)
    source = f"gs://{bucket}/{status.STATUS_KEY}"
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
    from kgg.cli.gce import GceError

    startup, progress = status.fetch_documents(bucket)
    group = None
    try:
        group = fetch_group() if fetch_group else None
    except GceError as error:
        # The bucket's view still helps; GCE's is missing for a reason the user can fix.
        print(f"(no VM view from GCE: {error})", file=sys.stderr)
    print(status.render_status(startup, progress, datetime.now(UTC), source, group))
    if args.bucket is None:  # the stack's Vertex AI jobs still queued or running
        from kgg.cli import vertex_commands, vertex_runs

        vertex_runs.print_section(vertex_commands.stack_outputs, only_active=True)
    return status.WATCH_EXIT_FAILED if status.outcome(startup, progress) == "failed" else 0


def _group_and_compute(args: argparse.Namespace) -> tuple[Compute, GroupRef]:
    from kgg.cli import gce

    group = gce.GroupRef.parse(resolve_group(args.group))
    return gce.Compute.from_environment(), group


def _start(args: argparse.Namespace) -> int:
    from kgg.cli.capacity import zone_list

    compute, group = _group_and_compute(args)
    state = read_group(compute, group)
    where = zone_list(state.region, state.zones)
    if state.target_size >= 1:
        print(f"already started: the group {group.name} keeps one VM in {where}")
    else:
        compute.resize(group, 1)
        print(
            f"started: the group {group.name} creates the VM in whichever of {where} has "
            "capacity, and keeps trying until it exists (also with the laptop closed)."
        )
        state = read_group(compute, group)
    _print_group(state)
    print("follow it: kgg status --watch")
    return 0


def _stop(args: argparse.Namespace) -> int:
    compute, group = _group_and_compute(args)
    state = read_group(compute, group)
    if state.target_size == 0:
        print(f"already stopped: the group {group.name} has no VM to keep")
    else:
        compute.resize(group, 0)
        print(
            f"stopping: the group {group.name} deletes its VM (the VM saves its workspace to the "
            "bucket as it shuts down; training resumes from its last backup). No VM charges once "
            "it is gone; the static IP and the bucket still cost a little (README)."
        )
        state = read_group(compute, group)
    for vm in state.outside:
        # Out of the group's hands (abandoned, or made by hand): only a delete stops it.
        compute.delete_instance(group.project, vm.zone, vm.name)
        print(
            f"deleted {vm.name} in {vm.zone}: it had the stack's labels but was outside the "
            f"group {group.name}, so neither idle shutdown nor a resize could stop it"
        )
    if state.outside:
        state = read_group(compute, group)
    _print_group(state)
    print("start it again with: kgg start")
    return 0


def _print_group(state: GroupState) -> None:
    from datetime import UTC, datetime

    from kgg.cli.capacity import render_group

    print("\n".join(render_group(state, datetime.now(UTC))))


def running_vm(group: GroupRef, state: GroupState) -> tuple[str, str]:
    """The name and zone of the group's running VM, wherever GCE put it."""
    from kgg.cli.gce import GceError

    vm = state.running
    if vm is None or not vm.name or not vm.zone:
        raise GceError(
            f"the group {group.name} has no running VM to reach ({state.phase}); "
            "see `kgg status`, start it with `kgg start`"
        )
    return vm.name, vm.zone


def ssh_command(group: GroupRef, state: GroupState, extra: list[str]) -> list[str]:
    """`gcloud compute ssh` for the group's running VM, wherever GCE put it."""
    name, zone = running_vm(group, state)
    command = ["gcloud", "compute", "ssh", name, "--zone", zone, "--project", group.project]
    command.append("--tunnel-through-iap")
    return [*command, *(["--", *extra] if extra else [])]


def _ssh(args: argparse.Namespace) -> int:
    compute, group = _group_and_compute(args)
    return _run_gcloud(ssh_command(group, read_group(compute, group), args.remote), args.print_only)


def _run_gcloud(command: list[str], print_only: bool = False) -> int:
    import shlex

    if print_only:
        print(shlex.join(command))
        return 0
    if shutil.which("gcloud") is None:
        print(
            f"error: gcloud is not installed (https://cloud.google.com/sdk/docs/install); "
            f"the command is: {shlex.join(command)}",
            file=sys.stderr,
        )
        return 2
    return subprocess.run(command, check=False).returncode


def _notebook(args: argparse.Namespace) -> int:
    """The IAP tunnel to JupyterLab (notebookAccess iap), open until Ctrl-C."""
    from kgg.cli.remote import tunnel_command

    compute, group = _group_and_compute(args)
    name, zone = running_vm(group, read_group(compute, group))
    command = tunnel_command(name, zone, group.project, args.port, args.local_port)
    url = f"https://localhost:{args.local_port}"
    if not args.print_only:
        print(f"JupyterLab: {url} (through IAP to {name}; Ctrl-C closes the tunnel)")
        print("  the certificate is self-signed: check its SHA-256 against `kgg status`")
        if args.open:
            import threading
            import webbrowser

            threading.Timer(3.0, webbrowser.open, [url]).start()  # once the tunnel listens
    try:
        return _run_gcloud(command, args.print_only)
    except KeyboardInterrupt:
        return 130


def _ssh_proxy(args: argparse.Namespace) -> int:
    """ssh's ProxyCommand: pins the running VM's host keys (with --known-hosts), then replaces
    itself with the IAP tunnel on stdin/stdout. ssh reads the known_hosts file only once the
    tunnel has brought it the VM's key, so the keys written here are the ones it checks."""
    import os

    from kgg.cli import remote

    compute, group = _group_and_compute(args)
    state = read_group(compute, group)
    name, zone = running_vm(group, state)
    if args.known_hosts:
        attributes = compute.guest_attributes(group.project, zone, name, remote.HOST_KEYS_PATH)
        lines = remote.known_hosts_lines(args.host_key_alias or name, attributes)
        if not lines:
            print(no_host_keys(name), file=sys.stderr)
            return 2
        instance_id = state.running.id if state.running else ""
        if remote.pin_host_keys(Path(args.known_hosts), lines, instance_id):
            print(remote.changed_keys_warning(name, instance_id), file=sys.stderr)
    command = remote.proxy_command(name, zone, group.project, args.port)
    if shutil.which("gcloud") is None:
        print("error: gcloud is not installed (https://cloud.google.com/sdk/docs/install)",
              file=sys.stderr)  # fmt: skip
        return 2
    os.execvp(command[0], command)


def no_host_keys(name: str) -> str:
    return (
        f"error: the VM {name} has published no SSH host keys (guest attributes hostkeys/, "
        "written at every boot), so ssh cannot check whom it reaches. Try again once `kgg "
        "status` shows the boot past its first steps; a VM made before the stack set "
        "enable-guest-attributes cannot publish them: `pulumi up`, then `kgg "
        "stop` and `start`. To connect without checking the host key: `kgg "
        "ssh-config --no-pin-host-key`."
    )


def _ssh_config(args: argparse.Namespace) -> int:
    from kgg.cli import remote

    group = resolve_group(args.group)
    host = args.name or f"kgg-{_stack_name()}"
    user = args.user or remote.os_login_user(_gcloud_account())
    path = Path(args.config).expanduser().absolute()
    # The VM's keys, rewritten by the proxy at each connection: pinned to the VM running now.
    known_hosts = path.parent / "kgg_known_hosts" / host if args.pin_host_key else None
    entry = remote.host_entry(host, group, user, known_hosts)
    if args.print_only:
        print(entry, end="")
        return 0
    changed = remote.write_ssh_config(path, host, entry)
    print(f"{'wrote' if changed else 'unchanged:'} the entry for `ssh {host}` in {path}")
    if known_hosts is None:
        print("  warning: any host key is accepted (--no-pin-host-key); only IAP checks the VM")
    if not user:
        print(
            "  no OS Login user known: add --user NAME (`gcloud compute os-login describe-profile`)"
        )
    print(f"  first run `kgg ssh` once (it registers your key with OS Login); "
          f"VS Code: Remote-SSH: Connect to Host... -> {host}")  # fmt: skip
    return 0


def _stack_name(
    which: Callable[[str], str | None] = shutil.which, run: Runner = subprocess.run
) -> str:
    fix = "pass --name HOST"
    if which("pulumi") is None:
        raise StackValueError(f"no --name given and the pulumi CLI is not installed; {fix}")
    result = _pulumi(["stack", "--show-name"], run)
    name = result.stdout.strip()
    if result.returncode != 0 or not name:
        raise StackValueError(f"`pulumi stack --show-name` gave nothing; {fix}")
    return name


def _gcloud_account(run: Runner = subprocess.run) -> str:
    if shutil.which("gcloud") is None:
        return ""
    try:
        result = run(["gcloud", "config", "get-value", "account"], capture_output=True,
                     text=True, timeout=30, check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""


def _pull(args: argparse.Namespace) -> int:
    from kgg.cli import results

    bucket = resolve_bucket(args.bucket)
    if not args.all_trials:  # a sweep: its best trial only
        from kgg.cli.vertex_runs import pull_best

        best = pull_best(bucket, args.run, args.to, args.workers, not args.quiet,
                         int(args.max_gb * 10**9), results.runs_listing(bucket))  # fmt: skip
        if best is not None:
            print(results.render_pull(*best))
            return 0
    run_id, target, stats = results.pull_run(
        bucket,
        args.run,
        args.to,
        workers=args.workers,
        progress=not args.quiet,
        max_bytes=int(args.max_gb * 10**9),
    )
    print(results.render_pull(run_id, target, stats))
    return 0


def _runs(args: argparse.Namespace) -> int:
    from kgg.cli import results, status
    from kgg.common import storage

    bucket = resolve_bucket(args.bucket)
    startup = status.parse_startup(storage.read_limited(f"gs://{bucket}/{status.STATUS_KEY}"))
    current = startup.run_id if startup else None
    costs = results.run_costs(bucket)
    print(results.render_runs(results.list_runs(bucket), bucket, current, costs))
    if args.bucket is None:  # the stack's bucket: its Vertex AI jobs too
        from kgg.cli import vertex_commands, vertex_runs

        vertex_runs.print_section(vertex_commands.stack_outputs)
    return 0


def _logs(args: argparse.Namespace) -> int:
    from kgg.cli import logs

    source = logs.log_source(resolve_bucket(args.bucket), args.which)
    if not args.follow:
        return logs.print_log(source, sys.stdout)
    try:
        return logs.follow(source, sys.stdout, interval=args.interval)
    except KeyboardInterrupt:
        print("\nstopped following; the VM carries on")
        return 130


def _tensorboard(args: argparse.Namespace) -> int:
    from kgg.cli import tensorboard

    bucket = resolve_bucket(args.bucket)
    cache = Path(args.cache) if args.cache else tensorboard.default_cache()
    if args.no_serve:
        print(tensorboard.render_mirror(tensorboard.mirror(bucket, args.run, cache)))
        return 0
    tensorboard.require_tensorboard()  # before the download, not after it
    return tensorboard.serve(bucket, args.run, cache, args.port, args.refresh)


def _guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turns the errors a user can fix into one clear line on stderr and exit code 2."""

    def run(args: argparse.Namespace) -> int:
        from kgg.cli.gce import GceError
        from kgg.cli.logs import LogNotFoundError
        from kgg.cli.remote import UnsafeHostError
        from kgg.cli.results import RunNotFoundError
        from kgg.cli.tensorboard import TensorBoardMissingError
        from kgg.cli.upload import LayoutError
        from kgg.common.storage import StorageError, UnsafeNameError

        try:
            return command(args)
        except (
            StackValueError,
            GceError,
            UnsafeHostError,
            LayoutError,
            LogNotFoundError,
            RunNotFoundError,
            StorageError,
            UnsafeNameError,
            TensorBoardMissingError,
        ) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2

    run.__doc__ = command.__doc__
    return run


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Adds the laptop commands to the `kgg` parser."""
    from kgg.cli import vertex_commands
    from kgg.cli.upload import DEFAULT_PREFIX

    vertex_commands.register(subparsers)
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
            "Shows GCE's view of the VM (running, stopped, or waiting for capacity with the last "
            "error per zone), then the boot steps, GPUs, notebook URL and TLS fingerprint, and "
            "the training progress, from gs://BUCKET/status/startup.json and the run's "
            "progress.json. Exit code 1 when something failed."
        ),
    )
    _add_bucket(status)
    _add_group(status)
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
    pull.add_argument(
        "--max-gb",
        type=float,
        default=20.0,
        help="download at most this much (default 20 GB; a run writes a few hundred MB)",
    )
    pull.add_argument(
        "--all-trials", action="store_true", help="a sweep: every trial (default: the best)"
    )
    pull.set_defaults(func=_guarded(_pull))

    runs = subparsers.add_parser(
        "runs",
        help="list the training runs with their metrics",
        description="Lists gs://BUCKET/runs/* with state, micro-F1 and accuracy.",
    )
    _add_bucket(runs)
    runs.set_defaults(func=_guarded(_runs))

    logs = subparsers.add_parser(
        "logs",
        help="print the VM's startup log or a run's training log (-f follows it)",
        description=(
            "Prints gs://BUCKET/logs/startup.log (`startup`) or gs://BUCKET/runs/RUN/train.log "
            "(`train`: the VM's current run; or a run id, or `latest`), which the VM uploads "
            "every few seconds: also readable once the VM is stopped. With -f, prints what is "
            "new until the boot or the run ends (exit 0 done, 1 failed)."
        ),
    )
    logs.add_argument(
        "which", nargs="?", default="train", metavar="startup|train|RUN", help="default: train"
    )
    logs.add_argument("-f", "--follow", action="store_true", help="follow until it ends")
    logs.add_argument(
        "--interval", type=float, default=5.0, help="seconds between polls with -f (default 5)"
    )
    _add_bucket(logs)
    logs.set_defaults(func=_guarded(_logs))

    board = subparsers.add_parser(
        "tensorboard",
        help="TensorBoard on a run's event files, mirrored from the bucket",
        description=(
            "Mirrors gs://BUCKET/runs/RUN/tensorboard/ (or every run's, for `all`) into a local "
            "cache, copying only what changed, and runs TensorBoard on it at "
            "http://localhost:PORT/, mirroring again every --refresh seconds. Needs the "
            "tensorboard package: `uv sync --group tensorboard`."
        ),
    )
    board.add_argument(
        "run", metavar="RUN", nargs="?", default="latest", help="run id, `latest` or `all`"
    )
    _add_bucket(board)
    board.add_argument(
        "--cache",
        metavar="DIR",
        help="the local mirror (default ~/.cache/keras-gpu-gcp/tensorboard)",
    )
    board.add_argument("--port", type=int, default=6006, help="TensorBoard's port (default 6006)")
    board.add_argument(
        "--refresh",
        type=float,
        default=60.0,
        help="seconds between mirrors while TensorBoard runs (default 60; 0 = once)",
    )
    board.add_argument(
        "--no-serve", action="store_true", help="only mirror the files and print where they are"
    )
    board.set_defaults(func=_guarded(_tensorboard))

    _group_command(
        subparsers,
        "start",
        _start,
        "start the VM (in any zone with capacity; GCE keeps trying until it exists)",
        "Resizes the VM's group to 1. The group creates the VM in whichever of its zones has "
        "capacity and retries by itself until it exists; training resumes from the bucket.",
    )
    _group_command(
        subparsers,
        "stop",
        _stop,
        "stop the VM now (no VM charges; the workspace and runs stay in the bucket)",
        "Resizes the VM's group to 0: the group deletes the VM and nothing recreates it until "
        "`start`. The static IP and the bucket remain (and cost a little).",
    )
    ssh = _group_command(
        subparsers,
        "ssh",
        _ssh,
        "ssh to the VM through IAP, wherever GCE put it",
        "Finds the group's running VM (its name and zone are chosen by GCE at run time) and runs "
        "`gcloud compute ssh NAME --zone ZONE --tunnel-through-iap [-- COMMAND]`.",
    )
    ssh.add_argument(
        "--print", dest="print_only", action="store_true", help="print the command, do not run it"
    )
    ssh.add_argument("remote", nargs="*", metavar="COMMAND", help="command to run on the VM")

    notebook = _group_command(
        subparsers,
        "notebook",
        _notebook,
        "open JupyterLab through an IAP tunnel (notebookAccess iap)",
        "Runs `gcloud compute start-iap-tunnel VM PORT --local-host-port=localhost:LOCAL` to the "
        "group's running VM and opens https://localhost:LOCAL. Needs IAP access "
        "(roles/iap.tunnelResourceAccessor) on the project.",
    )
    notebook.add_argument("--port", type=int, default=8888, help="the notebook port (default 8888)")
    notebook.add_argument(
        "--local-port", type=int, default=8888, help="the laptop's port (default 8888)"
    )
    notebook.add_argument("--no-open", dest="open", action="store_false", help="no browser")
    notebook.add_argument(
        "--print", dest="print_only", action="store_true", help="print the command, do not run it"
    )

    proxy = _group_command(
        subparsers,
        "ssh-proxy",
        _ssh_proxy,
        "ssh ProxyCommand to the VM through IAP (used by the ssh-config entry)",
        "Finds the group's running VM, writes its published host keys to --known-hosts, and "
        "becomes `gcloud compute start-iap-tunnel VM PORT --listen-on-stdin`.",
    )
    proxy.add_argument("--port", default="22", help="the VM's port (default 22)")
    proxy.add_argument(
        "--known-hosts",
        help="write the VM's published host keys here first (the file the entry pins them in)",
    )
    proxy.add_argument("--host-key-alias", help="the name they are written under (HostKeyAlias)")

    ssh_config = _group_command(
        subparsers,
        "ssh-config",
        _ssh_config,
        "add `Host kgg-<stack>` to ~/.ssh/config (ssh, scp, VS Code Remote-SSH through IAP)",
        "Writes, between marked lines, a Host entry whose ProxyCommand is `kgg ssh-proxy`; "
        "running it again replaces only that entry.",
    )
    ssh_config.add_argument("--name", help="the Host name (default kgg-<pulumi stack>)")
    ssh_config.add_argument("--user", help="OS Login user (default: from the gcloud account)")
    ssh_config.add_argument("--config", default="~/.ssh/config", help="default ~/.ssh/config")
    ssh_config.add_argument(
        "--no-pin-host-key",
        dest="pin_host_key",
        action="store_false",
        help="accept any host key (only IAP then checks which VM answers)",
    )
    ssh_config.add_argument(
        "--print", dest="print_only", action="store_true", help="print the entry, write nothing"
    )


def _group_command(
    subparsers: argparse._SubParsersAction,
    name: str,
    command: Callable[[argparse.Namespace], int],
    summary: str,
    description: str,
) -> argparse.ArgumentParser:
    """A command on the VM's group: its parser, with --group and the user-error guard."""
    parser = subparsers.add_parser(name, help=summary, description=description)
    _add_group(parser)
    parser.set_defaults(func=_guarded(command))
    return parser
