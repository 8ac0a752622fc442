"""The project's rooms and their one-way arrows (docs/ARCHITECTURE.md, "The rooms"): every
import of the project's own modules, at the top of a file or inside a function, is checked."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ("workload.storage", "workload.documents", "workload.layout", "workload.terminal",
          "workload.timestamps", "workload.emulator", "workload.hostkeys")  # fmt: skip
# (room, prefixes its modules must never import)
FORBIDDEN = {
    "workload/job": ("workload.ops", "infra", "startup"),
    "workload/ops": ("workload.job", "infra", "startup"),
    "startup": ("infra", "workload.ops"),
}


def _imports(path: Path) -> list[str]:
    """Every module `path` imports, `from a import b` counted as `a.b` too (b may be a module)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append(node.module)
            found += [f"{node.module}.{alias.name}" for alias in node.names]
    return found


def _violations(room: str, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted((ROOT / room).rglob("*.py"))
        for name in _imports(path)
        if any(name == bad or name.startswith(bad + ".") for bad in forbidden)
    ]


def test_finder_sees_imports_inside_functions_and_from_packages(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from workload import ops\n    import infra.settings\n")
    assert {"workload.ops", "infra.settings"} <= set(_imports(module))


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_room_imports_only_in_its_direction(room: str) -> None:
    assert _violations(room, FORBIDDEN[room]) == []


def test_shared_modules_import_neither_room() -> None:
    shared = [ROOT / (name.replace(".", "/") + ".py") for name in SHARED]
    bad = [
        f"{path.name} imports {name}"
        for path in shared
        for name in _imports(path)
        if name.startswith(("workload.job", "workload.ops", "infra", "startup"))
    ]
    assert bad == []
