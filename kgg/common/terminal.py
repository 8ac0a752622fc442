"""Text read from the bucket, made safe to print on the user's terminal.

Anyone who can write the bucket (the VM's service account, so any notebook user) writes the
status documents and names the objects. Printed raw, a string can carry terminal escapes: an
OSC 52 sequence writes the user's clipboard, others move the cursor or rewrite what is on screen.
"""

from __future__ import annotations

from typing import Any

# The only fields of the status documents shown as several lines (docs/CONTRACTS.md, "The status
# document").
MULTILINE_FIELDS = frozenset({"log_tail", "hint"})


def printable(text: object, multiline: bool = False) -> str:
    """`text` without control or other non-printing characters (ESC, BEL, CSI, bidi overrides).

    Whitespace controls (tab, CR, and newline unless `multiline`) become a space."""
    kept = []
    for char in str(text).replace("\r\n", "\n"):
        if char.isprintable() or (multiline and char == "\n"):
            kept.append(char)
        elif char.isspace():
            kept.append(" ")
    return "".join(kept)


def clean_document(value: Any, multiline: bool = False) -> Any:
    """A parsed JSON document with every string, keys included, passed through `printable`.

    Newlines stay only in MULTILINE_FIELDS, so no other field can start a line of its own."""
    if isinstance(value, str):
        return printable(value, multiline)
    if isinstance(value, dict):
        return {
            printable(key): clean_document(item, key in MULTILINE_FIELDS)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [clean_document(item) for item in value]
    return value
