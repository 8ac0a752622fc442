"""`kgg ssh`, `notebook`, `ssh-config` and `ssh-proxy`: the running VM through IAP, wherever GCE
put it (the commands' pieces in kgg/cli/remote.py)."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import threading
import webbrowser
from pathlib import Path

from kgg.cli import remote
from kgg.cli.stack import Runner, add_group_command, resolve_group, stack_name
from kgg.cli.vm import group_and_compute, read_group, running_vm

GCLOUD_INSTALL = "https://cloud.google.com/sdk/docs/install"


def register(subparsers: argparse._SubParsersAction) -> None:
    ssh = add_group_command(
        subparsers,
        "ssh",
        run,
        "ssh to the VM through IAP, wherever GCE put it",
        "Finds the group's running VM (its name and zone are chosen by GCE at run time) and runs "
        "`gcloud compute ssh NAME --zone ZONE --tunnel-through-iap [-- COMMAND]`.",
    )
    ssh.add_argument(
        "--print", dest="print_only", action="store_true", help="print the command, do not run it"
    )
    ssh.add_argument("remote", nargs="*", metavar="COMMAND", help="command to run on the VM")

    notebook = add_group_command(
        subparsers,
        "notebook",
        run,
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

    proxy = add_group_command(
        subparsers,
        "ssh-proxy",
        run,
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

    ssh_config = add_group_command(
        subparsers,
        "ssh-config",
        run,
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


def run(args: argparse.Namespace) -> int:
    commands = {"ssh": _ssh, "notebook": _notebook, "ssh-proxy": _ssh_proxy,
                "ssh-config": _ssh_config}  # fmt: skip
    return commands[args.command](args)


def _ssh(args: argparse.Namespace) -> int:
    compute, group = group_and_compute(args.group)
    name, zone = running_vm(group, read_group(compute, group))
    return _run_gcloud(remote.ssh_command(name, zone, group.project, args.remote), args.print_only)


def _run_gcloud(command: list[str], print_only: bool = False) -> int:
    if print_only:
        print(shlex.join(command))
        return 0
    if shutil.which("gcloud") is None:
        print(
            f"error: gcloud is not installed ({GCLOUD_INSTALL}); "
            f"the command is: {shlex.join(command)}",
            file=sys.stderr,
        )
        return 2
    return subprocess.run(command, check=False).returncode


def _notebook(args: argparse.Namespace) -> int:
    """The IAP tunnel to JupyterLab (notebookAccess iap), open until Ctrl-C."""
    compute, group = group_and_compute(args.group)
    name, zone = running_vm(group, read_group(compute, group))
    command = remote.tunnel_command(name, zone, group.project, args.port, args.local_port)
    url = f"https://localhost:{args.local_port}"
    if not args.print_only:
        print(f"JupyterLab: {url} (through IAP to {name}; Ctrl-C closes the tunnel)")
        print("  the certificate is self-signed: check its SHA-256 against `kgg status`")
        if args.open:
            threading.Timer(3.0, webbrowser.open, [url]).start()  # once the tunnel listens
    try:
        return _run_gcloud(command, args.print_only)
    except KeyboardInterrupt:
        return 130


def _ssh_proxy(args: argparse.Namespace) -> int:
    """ssh's ProxyCommand: pins the running VM's host keys (with --known-hosts), then replaces
    itself with the IAP tunnel on stdin/stdout. ssh reads the known_hosts file only once the
    tunnel has brought it the VM's key, so the keys written here are the ones it checks."""
    compute, group = group_and_compute(args.group)
    state = read_group(compute, group)
    name, zone = running_vm(group, state)
    if args.known_hosts:
        attributes = compute.guest_attributes(group.project, zone, name, remote.HOST_KEYS_PATH)
        lines = remote.known_hosts_lines(args.host_key_alias or name, attributes)
        if not lines:
            print(remote.no_host_keys(name), file=sys.stderr)
            return 2
        instance_id = state.running.id if state.running else ""
        if remote.pin_host_keys(Path(args.known_hosts), lines, instance_id):
            print(remote.changed_keys_warning(name, instance_id), file=sys.stderr)
    command = remote.proxy_command(name, zone, group.project, args.port)
    if shutil.which("gcloud") is None:
        print(f"error: gcloud is not installed ({GCLOUD_INSTALL})", file=sys.stderr)
        return 2
    os.execvp(command[0], command)


def _ssh_config(args: argparse.Namespace) -> int:
    group = resolve_group(args.group)
    host = args.name or f"kgg-{stack_name('pass --name HOST')}"
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


def _gcloud_account(run: Runner = subprocess.run) -> str:
    if shutil.which("gcloud") is None:
        return ""
    try:
        result = run(["gcloud", "config", "get-value", "account"], capture_output=True,
                     text=True, timeout=30, check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""
