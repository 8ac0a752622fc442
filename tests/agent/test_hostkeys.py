"""At every boot the agent publishes sshd's public host keys as guest attributes `hostkeys/<type>`
(what the laptop's ssh entry pins), through a metadata server on 127.0.0.1; never a private key,
and a refusal does not stop the boot."""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Iterator

import pytest

from kgg.agent.agent import Agent
from kgg.agent.boot import boot
from kgg.common.vm_runtime import Metadata
from tests.fake_cloud import FakeCloud


def blob(key_type: str, payload: bytes) -> str:
    """An SSH public key blob: the type, then the key, each length-prefixed (RFC 4253 6.6)."""
    fields = (key_type.encode(), payload)
    return base64.b64encode(b"".join(len(f).to_bytes(4, "big") + f for f in fields)).decode()


ED25519 = blob("ssh-ed25519", bytes(range(32)))
ECDSA = blob("ecdsa-sha2-nistp256", b"nistp256" + bytes(65))
PRIVATE = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"


@pytest.fixture
def vm_with_keys(agent: Agent) -> Iterator[tuple[Agent, FakeCloud]]:
    ssh = agent.paths.ssh_host_keys
    ssh.mkdir(parents=True)
    (ssh / "ssh_host_ed25519_key.pub").write_text(f"ssh-ed25519 {ED25519} root@kgg-dev-vm\n")
    (ssh / "ssh_host_ecdsa_key.pub").write_text(f"ecdsa-sha2-nistp256 {ECDSA}\n")
    (ssh / "ssh_host_ed25519_key").write_text(PRIVATE)
    (ssh / "ssh_host_rsa_key.pub").write_text(f"ssh-rsa {ED25519}\n")  # its blob says ed25519
    (ssh / "ssh_host_dsa_key.pub").write_text("not a key\n")
    with FakeCloud() as cloud:
        metadata = Metadata(f"{cloud.url}/computeMetadata/v1", attempts=1)
        yield dataclasses.replace(agent, metadata=metadata), cloud


def test_boot_publishes_each_public_host_key_under_its_type(
    vm_with_keys: tuple[Agent, FakeCloud],
) -> None:
    agent, cloud = vm_with_keys

    assert boot(agent) == 0

    host_keys = {k: v for k, v in cloud.guest_attributes.items() if k.startswith("hostkeys/")}
    assert host_keys == {
        "hostkeys/ssh-ed25519": ED25519,
        "hostkeys/ecdsa-sha2-nistp256": ECDSA,
    }
    assert not any("PRIVATE" in value for value in cloud.guest_attributes.values())
    log = agent.paths.log.read_text()
    assert "SSH host keys published (guest attributes hostkeys/): " in log


def test_boot_publishes_the_notebook_certificates_fingerprint(
    vm_with_keys: tuple[Agent, FakeCloud],
) -> None:
    """What `status` vouches for: a guest attribute only a process on the VM can write."""
    from kgg.agent.jupyter import tls_fingerprint

    agent, cloud = vm_with_keys

    assert boot(agent) == 0

    fingerprint = tls_fingerprint(agent)
    assert cloud.guest_attributes["kgg/tls-sha256"] == fingerprint
    assert len(fingerprint.split(":")) == 32
    assert agent.status.update().tls_sha256 == fingerprint


def test_a_metadata_server_that_refuses_guest_attributes_does_not_stop_the_boot(
    vm_with_keys: tuple[Agent, FakeCloud],
) -> None:
    agent, cloud = vm_with_keys
    cloud.fail("/guest-attributes/", status=400)  # enable-guest-attributes not set

    assert boot(agent) == 0

    assert cloud.guest_attributes == {}
    assert "SSH host keys not published as guest attributes" in agent.paths.log.read_text()
