"""The package's rooms and their one-way arrows (docs/ARCHITECTURE.md, "The rooms"): every import
of the project's own modules, at the top of a file or inside a function, is checked, and no
module reaches itself again through them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "kgg"
ROOMS = ("infra", "startup", "agent", "job", "cli", "common")
# room -> the rooms it may import (besides itself). Everything shares `common`; the laptop's root
# parser and demo drive the job; the stack renders the startup script, whose uv and Python pins
# a Vertex job's container installs with too.
MAY_IMPORT = {
    "common": (),
    "job": ("common",),
    "cli": ("common", "job", "infra", "startup"),
    "agent": ("common",),
    "startup": ("common", "agent"),
    "infra": ("common", "startup"),
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


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(roots: tuple[Path, ...] | None = None) -> dict[str, Path]:
    """The modules under `roots` (the package by default), by dotted name."""
    return {
        _module(path): path for root in roots or (PACKAGE,) for path in sorted(root.rglob("*.py"))
    }


def _graph(roots: tuple[Path, ...] | None = None) -> dict[str, set[str]]:
    """Module -> the modules under `roots` it imports (a package import counts as its
    __init__)."""
    modules = _modules(roots)
    return {
        name: {imported for imported in _imports(path) if imported in modules} - {name}
        for name, path in modules.items()
    }


def test_finder_sees_imports_inside_functions_and_from_packages(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from kgg import cli\n    import kgg.infra.settings\n")
    assert {"kgg.cli", "kgg.infra.settings"} <= set(_imports(module))


def test_every_module_lives_in_a_room() -> None:
    loose = [
        name for name in _modules()
        if name not in ("kgg", "kgg.__main__") and name.split(".")[1] not in ROOMS
    ]  # fmt: skip
    assert loose == [] and set(MAY_IMPORT) == set(ROOMS)


@pytest.mark.parametrize("room", ROOMS)
def test_room_imports_only_in_its_direction(room: str) -> None:
    allowed = {room, *MAY_IMPORT[room]}
    bad = [
        f"{name} imports {imported}"
        for name, imports in _graph().items()
        if name.startswith(f"kgg.{room}.") or name == f"kgg.{room}"
        for imported in sorted(imports)
        if imported.count(".") and imported.split(".")[1] not in allowed
    ]
    assert bad == []


# Circles the move into one package found, each hidden by an import inside a function; ending them
# empties this list.
KNOWN_CIRCLES: list[str] = []


def _circles(graph: dict[str, set[str]]) -> list[str]:
    """Every import circle of `graph`, each as `a -> b -> a`."""
    circles: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for imported in sorted(graph[name]):
            if state.get(imported) == "open":
                circles.append(" -> ".join([*path[path.index(imported) :], imported]))
            elif imported not in state:
                visit(imported, [*path, imported])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    return sorted(circles)


def test_no_module_imports_itself_through_others() -> None:
    """The package and the benchmark beside it, which imports the job and shares bench/common."""
    assert _circles(_graph((PACKAGE, ROOT / "bench"))) == KNOWN_CIRCLES


def test_the_circle_finder_sees_a_circle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "kgg" / "common"
    fake.mkdir(parents=True)
    (fake / "a.py").write_text("def f():\n    from kgg.common import b\n")
    (fake / "b.py").write_text("import kgg.common.a\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    monkeypatch.setitem(globals(), "PACKAGE", tmp_path / "kgg")
    assert _graph() == {"kgg.common.a": {"kgg.common.b"}, "kgg.common.b": {"kgg.common.a"}}
    assert _circles(_graph()) == ["kgg.common.a -> kgg.common.b -> kgg.common.a"]


def test_the_circle_finder_sees_a_circle_in_bench(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The benchmark's modules are scanned as the package's: a circle hidden by an import
    inside a function is found there too."""
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "run.py").write_text("from bench import gpu\n")
    (bench / "gpu.py").write_text("def main():\n    from bench.run import log\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    assert _circles(_graph((bench,))) == ["bench.gpu -> bench.run -> bench.gpu"]
