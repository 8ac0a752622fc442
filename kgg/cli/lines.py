"""Text pieces shared by the status views (the VM's report and GCE's view of its group)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

# GCE instance, zone and group names (RFC 1035 labels): only such names go into the commands
# the views print for pasting. https://cloud.google.com/compute/docs/naming-resources
GCE_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")


def clock(moment: datetime | None) -> str:
    """`10:04:30` in UTC, or `-`."""
    return moment.astimezone(UTC).strftime("%H:%M:%S") if moment else "-"


def field(label: str, value: str) -> str:
    """`Notebook:    https://...`: one labelled line, values aligned."""
    return f"{label + ':':<13}{value}"
