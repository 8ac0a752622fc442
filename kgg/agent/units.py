"""Files the agent writes from Jinja templates (kgg/agent/templates): systemd units and the
Jupyter config. A file is rewritten only when its text changed, so a caller knows whether the
service must restart."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

TEMPLATES = Path(__file__).resolve().parent / "templates"


def jinja(folder: Path) -> Environment:
    """Jinja for the project's templates (the startup script, units, Jupyter's config): an
    unknown name is an error, nothing is HTML-escaped, block tags leave no blank lines."""
    return Environment(
        loader=FileSystemLoader(str(folder)),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(template: str, **context: Any) -> str:
    environment = jinja(TEMPLATES)
    environment.filters["py"] = python_literal
    text = environment.get_template(template).render(**context)
    return text if text.endswith("\n") else text + "\n"


def python_literal(value: Any) -> str:
    """A Python literal for the Jupyter config (JSON strings and numbers are valid Python)."""
    import json

    if isinstance(value, bool):
        return "True" if value else "False"
    return json.dumps(value)


def write_if_changed(path: Path, text: str, mode: int = 0o644) -> bool:
    """Atomically writes `text`; True when the file is new or changed."""
    if path.is_file() and not path.is_symlink() and path.read_text() == text:
        os.chmod(path, mode)
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    return True
