"""Reaching the VM from the laptop through IAP (Google's Identity-Aware Proxy, which checks the
user's IAM rights): the notebook tunnel (`notebook`), the ssh proxy (`ssh-proxy`) and the
`~/.ssh/config` entry that uses it (`ssh-config`), so `ssh kgg-<stack>` and VS Code Remote-SSH
reach the VM wherever its group put it. The VM's name and zone are looked up at each use, and
its SSH host keys pinned: the VM publishes them as guest attributes (kgg/common/hostkeys.py), which
the proxy reads through the Compute API and writes to the entry's own known_hosts file before ssh
checks the key."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path
from typing import Any

from kgg.common import hostkeys
from kgg.common.contract import CLI_NAME
from kgg.common.errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the checkout: ssh runs its workload
BEGIN = "# >>> keras-gpu-gcp {name} >>> (written by `kgg ssh-config`)"
END = "# <<< keras-gpu-gcp {name} <<<"
HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
HOST_KEYS_PATH = f"{hostkeys.NAMESPACE}/"  # guest attributes: one per key type


class UnsafeHostError(UserError, ValueError):
    """A Host name or ssh config that the entry cannot be written into safely."""


def tunnel_command(
    name: str, zone: str, project: str, remote_port: int, local_port: int
) -> list[str]:
    """`gcloud compute start-iap-tunnel` from localhost:LOCAL to the VM's port."""
    return [
        "gcloud", "compute", "start-iap-tunnel", name, str(remote_port),
        f"--local-host-port=localhost:{local_port}", "--zone", zone, "--project", project,
    ]  # fmt: skip


def ssh_command(name: str, zone: str, project: str, extra: list[str]) -> list[str]:
    """`gcloud compute ssh` to the VM through IAP, with the command to run there, if any."""
    command = ["gcloud", "compute", "ssh", name, "--zone", zone, "--project", project]
    command.append("--tunnel-through-iap")
    return [*command, *(["--", *extra] if extra else [])]


def proxy_command(name: str, zone: str, project: str, port: str) -> list[str]:
    """ssh's ProxyCommand: the tunnel on stdin/stdout."""
    return [
        "gcloud", "compute", "start-iap-tunnel", name, port, "--listen-on-stdin",
        "--zone", zone, "--project", project, "--verbosity=warning",
    ]  # fmt: skip


def host_entry(
    host: str,
    group: str,
    user: str | None,
    known_hosts: Path | None,
    python: str = sys.executable,
) -> str:
    """The marked `Host` block. Its ProxyCommand asks the group for its running VM at each
    connection (a recreated VM has a new name, zone and host keys) and, with `known_hosts`, writes
    that VM's published host keys there for ssh to check strictly. Without it (`ssh-config
    --no-pin-host-key`) any host key is accepted and only IAP authenticates the VM."""
    if not HOST_NAME.fullmatch(host):
        raise UnsafeHostError(f"host name {host!r} must be letters, digits, . _ - (--name)")
    proxy = ["env", f"PYTHONPATH={PROJECT_ROOT}", python, "-m", CLI_NAME, "ssh-proxy"]
    proxy += ["--group", group]
    if known_hosts is not None:
        proxy += ["--known-hosts", str(known_hosts), "--host-key-alias", host]
    checking = (
        [
            f"  HostKeyAlias {host}",
            f"  UserKnownHostsFile {_config_path(known_hosts)}",
            "  StrictHostKeyChecking yes",
        ]
        if known_hosts is not None
        else ["  StrictHostKeyChecking no", "  UserKnownHostsFile /dev/null"]
    )
    lines = [
        BEGIN.format(name=host),
        f"Host {host}",
        f"  HostName {host}",
        *([f"  User {user}"] if user else []),
        "  IdentityFile ~/.ssh/google_compute_engine",
        f"  ProxyCommand {shlex.join([*proxy, '--port'])} %p",
        *checking,
        "  ServerAliveInterval 30",
        END.format(name=host),
    ]
    return "\n".join(lines) + "\n"


def _config_path(path: Path) -> str:
    """A path as ssh_config reads it: quoted, and refused where ssh would expand or split it."""
    text = str(path)
    if not path.is_absolute() or any(char in text for char in '"%~\\') or not text.isprintable():
        raise UnsafeHostError(
            f"known_hosts path {text!r} cannot go into an ssh config; pass another --config"
        )
    return f'"{text}"'


def known_hosts_lines(alias: str, attributes: list[dict[str, Any]]) -> list[str]:
    """known_hosts lines for `alias` from the VM's `hostkeys/` guest attributes (key = key type,
    value = the base64 public key); an attribute that is not a well-formed host key is dropped."""
    lines = set()
    for attribute in attributes:
        key_type, blob = str(attribute.get("key")), str(attribute.get("value")).strip()
        if attribute.get("namespace") not in (None, hostkeys.NAMESPACE):
            continue
        if hostkeys.is_host_key(key_type, blob):
            lines.add(f"{alias} {key_type} {blob}")
    return sorted(lines)


def write_known_hosts(path: Path, lines: list[str]) -> None:
    """Replaces `path` with `lines` (0600, its folder 0700): the keys of the VM running now."""
    _replace(path, "".join(f"{line}\n" for line in lines).encode(), 0o600)


def pin_host_keys(path: Path, lines: list[str], instance_id: str) -> bool:
    """Pins `lines` for the VM `instance_id` in `path` (the VM's id beside it, in `<path>.vm`);
    True when that same VM published other keys at the last connection. A VM keeps its keys for
    its life, but any process on it can rewrite the guest attributes: a change is worth a
    warning (a recreated VM has a new id and new keys, and is none)."""
    marker = path.with_name(f"{path.name}.vm")
    try:
        same_vm = bool(instance_id) and marker.read_text().strip() == instance_id
        before = set(path.read_text().splitlines()) if same_vm else set()
    except OSError:
        same_vm, before = False, set()
    write_known_hosts(path, lines)
    _replace(marker, f"{instance_id}\n".encode(), 0o600)
    return same_vm and before != set(lines)


def no_host_keys(name: str) -> str:
    return (
        f"error: the VM {name} has published no SSH host keys (guest attributes hostkeys/, "
        "written at every boot), so ssh cannot check whom it reaches. Try again once `kgg "
        "status` shows the boot past its first steps; a VM made before the stack set "
        "enable-guest-attributes cannot publish them: `pulumi up`, then `kgg "
        "stop` and `start`. To connect without checking the host key: `kgg "
        "ssh-config --no-pin-host-key`."
    )


def changed_keys_warning(name: str, instance_id: str) -> str:
    return (
        f"warning: the VM {name} (instance {instance_id}) publishes other SSH host keys than at "
        "your last connection to it. A VM keeps its keys for its life, and any process on it "
        "can rewrite what it publishes (guest attributes), so one may have: ssh now checks the "
        "new keys, and refuses the VM if they are not its own. Unexpected? `kgg "
        "stop` and `start` give a new VM."
    )


def with_entry(config: str, host: str, entry: str) -> str:
    """`config` with the block for `host` replaced (or added at the end); every other byte kept."""
    begin, end = BEGIN.format(name=host), END.format(name=host)
    start = config.find(begin)
    if start >= 0:
        stop = config.find(end, start)
        if stop < 0:
            raise UnsafeHostError(f"~/.ssh/config has {begin!r} without its end line; remove it")
        stop = config.find("\n", stop)
        stop = len(config) if stop < 0 else stop + 1
        return config[:start] + entry + config[stop:]
    separator = (
        "" if not config or config.endswith("\n\n") else ("\n" if config.endswith("\n") else "\n\n")
    )
    return config + separator + entry


def write_ssh_config(path: Path, host: str, entry: str) -> bool:
    """Writes the entry into `path` (made 0600 if new); True when the file changed."""
    # Bytes as they are: no newline translation, and bytes that are not UTF-8 kept.
    old = path.read_bytes().decode("utf-8", "surrogateescape") if path.exists() else ""
    new = with_entry(old, host, entry)
    if new == old:
        return False
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o600
    _replace(path, new.encode("utf-8", "surrogateescape"), mode)
    return True


def _replace(path: Path, data: bytes, mode: int) -> None:
    """Writes `path` whole or not at all (a temporary file renamed over it), its folder 0700."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.kgg-tmp")
    tmp.write_bytes(data)
    tmp.chmod(mode)
    tmp.replace(path)


def os_login_user(account: str) -> str | None:
    """OS Login's POSIX name for a Google account: the address with every character that is not
    a letter or digit made `_` (alice@example.com -> alice_example_com)."""
    account = account.strip().lower()
    return re.sub(r"[^a-z0-9]", "_", account) if "@" in account else None
