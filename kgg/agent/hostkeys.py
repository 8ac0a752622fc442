"""The VM's SSH host keys, published at every boot as guest attributes `hostkeys/<type>`
(kgg/common/hostkeys.py), so the laptop's ssh entry can pin them. GCE's guest agent publishes them
only when it makes new keys, and not on images that leave keys to cloud-init; this covers every
image and every boot."""

from __future__ import annotations

from kgg.agent.config import Paths
from kgg.common import hostkeys
from kgg.common.vm_runtime import Metadata


def host_keys(paths: Paths) -> dict[str, str]:
    """Key type -> base64 key, from sshd's `ssh_host_*_key.pub` files (never the private keys)."""
    keys = {}
    for path in sorted(paths.ssh_host_keys.glob("ssh_host_*_key.pub")):
        parsed = hostkeys.parse_public_key(path.read_text())
        if parsed:
            keys[parsed[0]] = parsed[1]
    return keys


def publish(paths: Paths, metadata: Metadata) -> list[str]:
    """Writes each host key's guest attribute; returns the key types written."""
    keys = host_keys(paths)
    for key_type, blob in keys.items():
        metadata.put_guest_attribute(f"{hostkeys.NAMESPACE}/{key_type}", blob)
    return list(keys)
