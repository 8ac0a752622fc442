"""`ssh kgg-dev` through the entry `kgg ssh-config` writes, with the real OpenSSH client and a
real sshd on 127.0.0.1 (tests/cli/sshd.py): the proxy pins the host keys the VM published as guest
attributes (the fake Compute API serves them), so ssh reaches the VM that published them, refuses
one that did not, and follows a recreated VM's new keys without a prompt."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kgg.cli import remote
from kgg.cli.gce import ENDPOINT_ENV

from .conftest import run_workload
from .fake_gce import GROUP_PATH, FakeCompute, running_fake
from .sshd import Sshd, install_gcloud, keygen, require_openssh, start_sshd

VM, ZONE, PROJECT = "kgg-dev-0a1b2c-7kq2", "us-central1-b", "kgg-demo-project"
HOST = "kgg-dev"


@dataclass
class Laptop:
    home: Path
    sshd: Sshd
    compute: FakeCompute
    gcloud_log: Path
    host_key: Path

    @property
    def config(self) -> Path:
        return self.home / ".ssh" / "config"

    @property
    def known_hosts(self) -> Path:
        return self.home / ".ssh" / "kgg_known_hosts" / HOST

    def publish(self, *keys: Path) -> None:
        """The VM's guest agent writing `hostkeys/ssh-ed25519` for each key."""
        self.compute.host_keys = [
            {"namespace": "hostkeys", "key": "ssh-ed25519", "value": public_blob(key)}
            for key in keys
        ]

    def ssh(self, *command: str) -> subprocess.CompletedProcess[str]:
        # -i: ssh expands the entry's ~ from the passwd database, not from HOME.
        return subprocess.run(
            ["ssh", "-F", str(self.config), "-i", str(self.sshd.client_key),
             "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", HOST, *command],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    def tunnels(self) -> list[list[str]]:
        if not self.gcloud_log.exists():
            return []
        calls = [json.loads(line) for line in self.gcloud_log.read_text().splitlines()]
        return [call for call in calls if call[:2] == ["compute", "start-iap-tunnel"]]


def public_blob(key: Path) -> str:
    return Path(f"{key}.pub").read_text().split()[1]


@pytest.fixture
def laptop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Laptop]:
    require_openssh()
    home = tmp_path / "home"
    home.mkdir()
    host_key = tmp_path / "host_ed25519"
    keygen(host_key)
    sshd = start_sshd(tmp_path, host_key)
    log = tmp_path / "gcloud-calls.jsonl"
    install_gcloud(tmp_path / "bin", log, sshd.port)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("HOME", str(home))
    try:
        with running_fake("running") as compute:
            monkeypatch.setenv(ENDPOINT_ENV, compute.url)
            argv = ("ssh-config", "--group", GROUP_PATH, "--name", HOST, "--user", sshd.user)
            written = run_workload(*argv, cwd=tmp_path)
            assert written.returncode == 0, written.stderr
            yield Laptop(home, sshd, compute, log, host_key)
    finally:
        sshd.stop()


def test_ssh_reaches_the_vm_whose_published_host_key_it_pinned(laptop: Laptop) -> None:
    laptop.publish(laptop.host_key)

    result = laptop.ssh("echo", "reached")

    assert result.returncode == 0, result.stderr
    assert result.stdout == "reached\n"
    assert laptop.known_hosts.read_text() == f"{HOST} ssh-ed25519 {public_blob(laptop.host_key)}\n"
    assert laptop.tunnels() == [
        ["compute", "start-iap-tunnel", VM, "22", "--listen-on-stdin", "--zone", ZONE,
         "--project", PROJECT, "--verbosity=warning"],
    ]  # fmt: skip
    assert (
        f"GET projects/{PROJECT}/zones/{ZONE}/instances/{VM}/getGuestAttributes"
        "?queryPath=hostkeys/" in laptop.compute.calls()
    )


def test_ssh_refuses_a_server_whose_key_the_vm_did_not_publish(
    laptop: Laptop, tmp_path: Path
) -> None:
    published = tmp_path / "the_vms_real_key"
    keygen(published)
    laptop.publish(published)  # whatever answers on the tunnel holds another key

    result = laptop.ssh("echo", "reached")

    assert result.returncode == 255
    assert "Host key verification failed" in result.stderr
    assert "reached" not in result.stdout


def test_a_vm_that_published_no_host_keys_is_not_connected_to(laptop: Laptop) -> None:
    result = laptop.ssh("echo", "reached")  # the fake answers 404, as GCE does before the agent

    assert result.returncode == 255
    assert f"the VM {VM} has published no SSH host keys" in result.stderr
    assert "--no-pin-host-key" in result.stderr
    assert laptop.tunnels() == []  # nothing was opened


def test_a_recreated_vms_new_key_replaces_the_old_one_without_a_prompt(
    laptop: Laptop, tmp_path: Path
) -> None:
    laptop.publish(laptop.host_key)
    assert laptop.ssh("true").returncode == 0

    new_key = tmp_path / "recreated_ed25519"
    keygen(new_key)
    laptop.sshd.start(new_key)  # the group made a new VM: new host key, same name here
    stale = laptop.ssh("echo", "reached")
    laptop.compute.instance_id = "9001002003004005006"  # GCE lists the new VM, with its own id
    laptop.publish(new_key)  # and its agent published the new key
    fresh = laptop.ssh("echo", "reached")

    assert stale.returncode == 255 and "Host key verification failed" in stale.stderr
    assert fresh.returncode == 0 and fresh.stdout == "reached\n", fresh.stderr
    assert laptop.known_hosts.read_text() == f"{HOST} ssh-ed25519 {public_blob(new_key)}\n"
    assert "publishes other SSH host keys" not in stale.stderr + fresh.stderr


def test_keys_that_changed_on_the_same_vm_get_a_warning_once(
    laptop: Laptop, tmp_path: Path
) -> None:
    """Any process on the VM (a notebook user) can rewrite the published keys: the pin is only
    as good as the VM's own guest attributes, and a change on the same VM is worth saying."""
    laptop.publish(laptop.host_key)
    assert laptop.ssh("true").returncode == 0
    rewritten = tmp_path / "rewritten_ed25519"
    keygen(rewritten)
    laptop.publish(rewritten)  # same VM (same instance id), other keys

    changed = laptop.ssh("echo", "reached")
    again = laptop.ssh("echo", "reached")

    warning = (
        f"warning: the VM {VM} (instance 7215004411923377121) publishes other SSH host keys than "
        "at your last connection to it."
    )
    assert warning in changed.stderr
    assert changed.returncode == 255 and "Host key verification failed" in changed.stderr
    assert warning not in again.stderr  # said once: the pin now holds the new keys


def test_only_well_formed_host_keys_of_their_own_type_are_pinned(tmp_path: Path) -> None:
    """Any process on the VM can write guest attributes: nothing odd reaches known_hosts."""
    keygen(tmp_path / "real")
    real = public_blob(tmp_path / "real")
    attributes = [
        {"namespace": "hostkeys", "key": "ssh-ed25519", "value": real},
        {"namespace": "hostkeys", "key": "ssh-ed25519", "value": real + "\nevil ssh-ed25519 AAAA"},
        {"namespace": "hostkeys", "key": "ssh-rsa", "value": real},  # the blob says ed25519
        {"namespace": "hostkeys", "key": "@cert-authority *", "value": real},
        {"namespace": "hostkeys", "key": "ssh-ed25519", "value": "bm90IGEga2V5"},
        {"namespace": "other", "key": "ssh-ed25519", "value": real},
        {"namespace": "hostkeys", "key": "ssh-ed25519"},
    ]

    assert remote.known_hosts_lines(HOST, attributes) == [f"{HOST} ssh-ed25519 {real}"]


def test_the_entry_pins_keys_unless_told_not_to(tmp_path: Path) -> None:
    known = tmp_path / "kgg_known_hosts" / HOST
    pinned = remote.host_entry(HOST, GROUP_PATH, "alice", known, python="/usr/bin/python3")
    loose = remote.host_entry(HOST, GROUP_PATH, "alice", None, python="/usr/bin/python3")

    proxy = next(line for line in pinned.splitlines() if "ProxyCommand" in line)
    assert proxy.endswith(
        f"ssh-proxy --group {GROUP_PATH} --known-hosts {known} --host-key-alias {HOST} --port %p"
    )
    assert f'  UserKnownHostsFile "{known}"\n' in pinned
    assert f"  HostKeyAlias {HOST}\n  " in pinned and "  StrictHostKeyChecking yes\n" in pinned
    assert "StrictHostKeyChecking no" not in pinned
    assert "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n" in loose
    assert "--known-hosts" not in loose
    with pytest.raises(remote.UnsafeHostError, match="cannot go into an ssh config"):
        remote.host_entry(HOST, GROUP_PATH, None, tmp_path / "50%" / HOST)
