"""The code archive the VM and a Vertex AI job run leaves kgg/infra/ out (kgg/infra/archive.py):
what their entry points import when they start, following module-level imports only (an import
inside a function runs when its command does), must not reach kgg.infra, or `python -m kgg`
fails there before any command runs."""

from __future__ import annotations

import ast
from pathlib import Path

from kgg.infra.archive import NOT_ARCHIVED

ROOT = Path(__file__).resolve().parents[1]
# What the VM (systemd units, the startup script) and a Vertex job's bootstrap start.
ENTRY_POINTS = ("kgg.__main__", "kgg.cli.main", "kgg.agent.__main__", "kgg.job.cli")


def _path(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _module_level_imports(tree: ast.Module) -> list[str]:
    """Imports run at import time: in the module's body and its if/try blocks, not in defs."""
    found: list[str] = []
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.If | ast.Try | ast.With):
            for field in ("body", "orelse", "finalbody", "handlers"):
                for child in getattr(node, field, []):
                    pending += child.body if isinstance(child, ast.ExceptHandler) else [child]
    return found


def imported_at_start(entry: str) -> dict[str, str]:
    """Every project module `entry` imports when it starts -> the module that imports it."""
    seen = {entry: ""}
    queue = [entry]
    while queue:
        module = queue.pop()
        path = _path(module)
        if path is None:
            continue
        for name in _module_level_imports(ast.parse(path.read_text())):
            parts = name.split(".")
            # `from a.b import c`: a, a.b and a.b.c (when c is a module) all load.
            for end in range(1, len(parts) + 1):
                prefix = ".".join(parts[:end])
                if prefix.startswith("kgg") and prefix not in seen and _path(prefix):
                    seen[prefix] = module
                    queue.append(prefix)
    return seen


def test_the_archives_entry_points_start_without_kgg_infra() -> None:
    left_out = tuple(prefix.rstrip("/").replace("/", ".") for prefix in NOT_ARCHIVED)
    reached = [
        f"{entry} reaches {module} (imported by {importer})"
        for entry in ENTRY_POINTS
        for module, importer in imported_at_start(entry).items()
        if module.startswith(left_out)
    ]
    assert reached == []


def test_the_walk_follows_module_level_imports_and_skips_functions(tmp_path: Path) -> None:
    tree = ast.parse(
        "import a\ntry:\n    from b import c\nexcept ImportError:\n    import d\n"
        "if True:\n    import e\ndef f():\n    import g\n"
    )
    assert sorted(_module_level_imports(tree)) == ["a", "b", "b.c", "d", "e"]
