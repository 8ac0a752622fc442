"""The README stays true: its config table and cost table match the code."""

from __future__ import annotations

import json
import re

import pytest

from kgg.infra.catalogue import GPUS, hourly_cost_usd
from kgg.infra.stack_config import PROJECT_ROOT, declared_defaults

README = (PROJECT_ROOT / "README.md").read_text()


def _table_rows(heading: str) -> list[list[str]]:
    section = README.split(heading, 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")][2:]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def test_quick_start_has_the_two_commands():
    quick_start = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^(uv run [^#\n]+?)\s*(?:#|$)", quick_start, flags=re.M)
    assert commands == ["uv run kgg demo", "uv run pytest"]


def _as_written(default: object) -> str:
    """A default the way the README shows it: `""`, `true`, `[]`, `nvidia-tesla-t4`."""
    if isinstance(default, str):
        return default or '""'
    return json.dumps(default)


def test_config_table_lists_every_key_with_its_declared_default():
    rows = {row[0].strip("`"): row[1].strip("`") for row in _table_rows("## Configuration")}
    defaults = declared_defaults()
    assert set(rows) == set(defaults) | {"jupyterPassword", "notifyWebhook"}  # secrets: no default
    for key, default in defaults.items():
        assert rows[key] == _as_written(default), key


@pytest.mark.parametrize(
    ("gpu", "machine", "on_demand", "spot"),
    [("nvidia-tesla-t4", "n1-highmem-4", "$0.59", "~$0.30"),
     ("nvidia-l4", "g2-standard-4", "$0.71", "$0.40")],
)  # fmt: skip
def test_cost_table_matches_the_catalogue(gpu, machine, on_demand, spot):
    rows = _table_rows("## What it costs")
    assert [f"1x {GPUS[gpu].display_name.split()[-1]}", machine, on_demand, spot] in rows
    assert f"${hourly_cost_usd(GPUS[gpu], machine, 1, spot=False):.2f}" == on_demand
    assert f"${hourly_cost_usd(GPUS[gpu], machine, 1, spot=True):.2f}" == spot.lstrip("~")
