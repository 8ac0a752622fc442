"""Which notebook `status` tells the user to trust, and from where: the address from GCE (the
group's instance template: its static IP and the port infra set in its metadata) and the
certificate's SHA-256 from the VM's own guest attribute (the Compute API; only a process on the VM
can write guest attributes). Never from the bucket: anyone who may write it (a project Editor, a
CI account, another VM on a broad service account) could name their own server there and collect
the password. The bucket's copy is compared, and a difference said loudly.

Pure functions of the API's answers (kgg.cli.gce) and the status document."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from kgg.cli.lines import field
from kgg.common.contract import NOTEBOOK_ACCESS_KEY, NOTEBOOK_PORT_KEY, TLS_FINGERPRINT_ATTRIBUTE

FINGERPRINT = re.compile(r"[0-9A-F]{2}(:[0-9A-F]{2}){31}")
TLS_NAMESPACE, _, TLS_KEY = TLS_FINGERPRINT_ATTRIBUTE.partition("/")
TLS_QUERY = f"{TLS_NAMESPACE}/"  # getGuestAttributes' queryPath for the namespace
TRUST_NOTE = (
    "  (self-signed, published by the VM itself and read from GCE: accept the browser's warning\n"
    "  only if the certificate's SHA-256 fingerprint it shows is this one)"
)


@dataclass(frozen=True)
class NotebookIdentity:
    """What GCE says: the notebook's URL (None when the template does not say), the published
    fingerprint (None until the VM publishes it), and why either is missing."""

    url: str | None
    tls_sha256: str | None = None
    missing: str = ""


def template_url(template: dict[str, Any]) -> str | None:
    """`https://<static IP>:<port>` from the group's template (`https://localhost:<port>` for
    notebookAccess iap, through `kgg notebook`); None for a template made before
    the port was in its metadata."""
    properties = template.get("properties") or {}
    items = (properties.get("metadata") or {}).get("items") or []
    metadata = {str(item.get("key")): str(item.get("value")) for item in items}
    port = metadata.get(NOTEBOOK_PORT_KEY, "")
    if not port.isdigit() or not 0 < int(port) < 65536:
        return None
    if metadata.get(NOTEBOOK_ACCESS_KEY) == "iap":
        return f"https://localhost:{int(port)}"
    for interface in properties.get("networkInterfaces") or []:
        for access in interface.get("accessConfigs") or []:
            try:
                address = ipaddress.IPv4Address(str(access.get("natIP")))
            except ValueError:
                continue
            return f"https://{address}:{int(port)}"
    return None


def published_fingerprint(attributes: list[dict[str, Any]]) -> str | None:
    """The VM's `kgg/tls-sha256` guest attribute, when it is a SHA-256 fingerprint."""
    for attribute in attributes:
        if attribute.get("namespace") in (None, TLS_NAMESPACE) and attribute.get("key") == TLS_KEY:
            value = str(attribute.get("value")).strip().upper()
            if FINGERPRINT.fullmatch(value):
                return value
    return None


def _address(url: str | None) -> str:
    """The URL alone (the VM adds `(kgg notebook)` for iap)."""
    return (url or "").split(" ", 1)[0]


def render_notebook(
    bucket_url: str | None, bucket_fingerprint: str | None, gce: NotebookIdentity | None
) -> list[str]:
    """The Notebook and TLS lines of `status`. Only GCE's values are vouched for; without GCE's
    view the bucket's are shown as unchecked, and a bucket that disagrees with GCE is a warning."""
    if gce is None or gce.url is None:
        why = gce.missing if gce and gce.missing else "no view from GCE"
        lines = [field("Notebook", bucket_url or "not up yet")]
        if bucket_url or bucket_fingerprint:
            if bucket_fingerprint:
                lines.append(field("TLS SHA-256", bucket_fingerprint))
            lines.append(
                f"  (UNCHECKED: from the bucket's status document, which anyone who may write the "
                f"bucket can change; {why}. Check with --group, or where the Pulumi stack is)"
            )
        return lines
    up = "" if bucket_url else " (not up yet)"
    lines = [field("Notebook", f"{gce.url}{up}")]
    if gce.tls_sha256:
        lines += [field("TLS SHA-256", gce.tls_sha256), TRUST_NOTE]
    elif bucket_url:
        missing = gce.missing or "not yet"
        lines.append(
            field("TLS SHA-256", f"not published by the VM ({missing}): accept no certificate yet")
        )
    if bucket_url and _address(bucket_url) != gce.url:
        lines.append(
            f"WARNING: the bucket's status/startup.json names the notebook {_address(bucket_url)}, "
            f"but GCE says {gce.url}. Someone who can write the bucket may be phishing for your "
            "password: use only the address above."
        )
    if bucket_fingerprint and gce.tls_sha256 and bucket_fingerprint.upper() != gce.tls_sha256:
        lines.append(
            f"WARNING: the bucket's status/startup.json names another certificate "
            f"({bucket_fingerprint}) than the VM published: trust only the fingerprint above."
        )
    return lines
