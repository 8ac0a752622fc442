"""SSH host keys as GCE guest attributes, the form both sides agree on: the VM writes each of
sshd's public keys as `hostkeys/<type>` = its base64 blob (as GCE's guest agent does), and the
laptop's ssh proxy pins them. Stdlib only; anything on the VM can write guest attributes, so a
key is taken only when its type is known and its blob names that same type."""

from __future__ import annotations

import base64
import binascii
import re

NAMESPACE = "hostkeys"
TYPES = frozenset(
    {"ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa"}
)
BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")


def is_host_key(key_type: str, blob: str) -> bool:
    """A known key type, and clean base64 whose own first field (RFC 4253 6.6) is that type."""
    return key_type in TYPES and _encoded_type(blob) == key_type


def parse_public_key(line: str) -> tuple[str, str] | None:
    """(type, blob) of an OpenSSH `.pub` line (`type blob [comment]`), or None."""
    fields = line.split()
    if len(fields) >= 2 and is_host_key(fields[0], fields[1]):
        return fields[0], fields[1]
    return None


def _encoded_type(blob: str) -> str | None:
    if not BASE64.fullmatch(blob):
        return None
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        return None
    length = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else -1
    if length <= 0 or 4 + length > len(raw):
        return None
    return raw[4 : 4 + length].decode("ascii", "replace")
