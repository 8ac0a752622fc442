"""kgg/common/contract.py spells every name two rooms share once: no other module of kgg/ or
bench/ spells one of its literals, and its validators refuse what the VM and the CLI refused."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from kgg.common import contract
from kgg.common.contract import ContractError, check_run_id, check_secret_name

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = ROOT / "kgg/common/contract.py"


def _literals() -> dict[str, str]:
    """The contract's string constants, value -> name."""
    return {
        value: name
        for name, value in vars(contract).items()
        if name.isupper() and isinstance(value, str)
    }


def _not_names(tree: ast.AST) -> set[int]:
    """ids of the constants that are prose about the names, not uses of them: docstrings, and a
    command's own name (`add_parser("tensorboard")` is not the run's tensorboard/ folder)."""
    found = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "add_parser"
            and node.args
        ):
            found.add(id(node.args[0]))
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def _spells(text: str, literal: str) -> bool:
    """`text` is `literal`, or a name or path (no spaces: not prose) that holds it as a whole part:
    `instance/attributes/kgg-bucket`, an f-string's `/runs/`, `kgg-training.service.j2`."""
    if text == literal:
        return True
    if not re.search(r"[/.-]", literal) or re.search(r"\s", text):
        return False  # a bare word (`kgg`, `backup`) only counts spelled alone
    bare = literal.lstrip("/")  # `/opt/...` also as the relative `opt/...` under a test root
    end = "" if bare.endswith("/") else r"(?![A-Za-z0-9_-])"  # a prefix only with its slash
    return bool(re.search(rf"(?<![A-Za-z0-9_-]){re.escape(bare)}{end}", text))


def offences(path: Path, literals: dict[str, str]) -> list[str]:
    tree = ast.parse(path.read_text())
    skip = _not_names(tree)
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    return [
        f"{where}:{node.lineno}: {node.value!r} is contract.{literals[literal]}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
        for literal in literals
        if _spells(node.value, literal)
    ]


def _scanned() -> list[Path]:
    files = sorted([*(ROOT / "kgg").rglob("*.py"), *(ROOT / "bench").rglob("*.py")])
    return [path for path in files if path != CONTRACT]


def test_no_module_spells_a_contract_literal() -> None:
    literals = _literals()
    found = [line for path in _scanned() for line in offences(path, literals)]
    assert found == []


def test_the_scan_sees_literals_in_fstrings_paths_and_calls(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        '"""Writes status/startup.json."""\n'
        'KEY = "kgg-instance-group"\n'
        'def f(bucket, run):\n'
        '    """runs/<run>/ holds it."""\n'
        '    print("see gs://BUCKET/runs/ for the runs")\n'
        '    meta = "instance/attributes/kgg-bucket"\n'
        '    return f"gs://{bucket}/runs/{run}", render("kgg-training.service.j2"), "kgg"\n'
    )  # fmt: skip
    found = offences(module, _literals())
    assert [line.split(": ", 1)[0].rsplit(":", 1)[1] for line in found] == ["2", "6", "7", "7", "7"]
    assert any("contract.GROUP_NAME_KEY" in line for line in found)
    assert any("'/runs/' is contract.RUNS_PREFIX" in line for line in found)


@pytest.mark.parametrize("value", ["r1", "20260101-abc_1.2", "a", "..", "A-Z"])
def test_run_ids_the_vm_and_cli_accepted_pass(value: str) -> None:
    assert check_run_id(value) == value


@pytest.mark.parametrize("value", ["", "../status", "a/b", "r 1", "r\x1b[2J", "é"])
def test_a_bad_run_id_is_one_line_naming_it_and_the_fix(value: str) -> None:
    with pytest.raises(ContractError) as refused:
        check_run_id(value, fix="run pulumi up again")
    message = str(refused.value)
    assert message == (
        f"kgg-run-id {value!r} is not a run id (letters, digits, . _ -); run pulumi up again"
    )
    assert "\n" not in message and "\x1b" not in message


def test_a_run_id_named_by_the_user_says_where_to_look() -> None:
    with pytest.raises(ValueError, match=r"^'\.\./x' is not a run id .*; see `kgg runs`$"):
        check_run_id("../x", source="", fix="see `kgg runs`")


def test_secret_names_pass_and_others_are_refused_naming_the_key() -> None:
    assert check_secret_name("projects/p-1/secrets/kgg_pw-2") == "projects/p-1/secrets/kgg_pw-2"
    for bad in ("", "projects/p/secrets/s/versions/1", "secrets/s", "projects/p/secrets/a b"):
        with pytest.raises(ContractError) as refused:
            check_secret_name(bad)
        assert str(refused.value) == (
            f"kgg-jupyter-password-secret {bad!r} is not a secret name (projects/P/secrets/S)"
        )
    with pytest.raises(ContractError, match=r"^kgg-notify-webhook-secret 'x' is not a secret"):
        check_secret_name("x", source=contract.NOTIFY_SECRET_KEY)
