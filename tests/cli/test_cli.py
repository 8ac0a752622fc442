"""The laptop commands through the real `kgg` entry point, without TensorFlow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kgg.common import storage

from .conftest import run_workload

# Runs the CLI in a fresh interpreter and reports whether anything imported TensorFlow.
PROBE = (
    "import sys; from kgg.cli.main import run; code = run(sys.argv[1:]); "
    "print('TENSORFLOW IMPORTED' if 'tensorflow' in sys.modules else 'no tensorflow'); "
    "sys.exit(code)"
)


def _workload(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_workload(*argv, cwd=cwd, program=("-c", PROBE))


def test_upload_status_runs_and_pull_from_the_command_line_never_import_tensorflow(
    gcs_bucket: str, dataset_dir: Path, tmp_path: Path
) -> None:
    upload = _workload("upload", str(dataset_dir), "--bucket", gcs_bucket, cwd=tmp_path)
    assert upload.returncode == 0, upload.stderr
    assert "3 classes, 9 images" in upload.stdout

    storage.write_json(
        f"gs://{gcs_bucket}/status/startup.json",
        {"version": 1, "phase": "training", "steps": {}, "run_id": "r1", "training": "running"},
    )
    storage.write_bytes(
        f"gs://{gcs_bucket}/runs/r1/progress.json",
        json.dumps({"state": "done", "phase": "done", "metrics": {"micro_f1": 0.97}}).encode(),
    )
    status = _workload("status", "--bucket", gcs_bucket, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert "micro_f1 0.9700" in status.stdout

    runs = _workload("runs", "--bucket", gcs_bucket, cwd=tmp_path)
    assert runs.stdout.splitlines()[1].split()[:4] == ["r1", "*", "done", "0.9700"]

    pull = _workload("pull", "latest", "--bucket", gcs_bucket, "--to", "results", cwd=tmp_path)
    assert pull.returncode == 0, pull.stderr
    assert (tmp_path / "results" / "r1" / "progress.json").is_file()

    for result in (upload, status, runs, pull):
        assert result.stdout.rstrip().endswith("no tensorflow")


def test_start_stop_and_ssh_never_import_tensorflow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kgg.cli.gce import ENDPOINT_ENV

    from .fake_gce import GROUP_PATH, running_fake

    with running_fake("running") as fake:
        monkeypatch.setenv(ENDPOINT_ENV, fake.url)
        for argv in (["start"], ["stop"], ["ssh", "--print"], ["notebook", "--print"]):
            result = _workload(argv[0], "--group", GROUP_PATH, *argv[1:], cwd=tmp_path)
            assert result.returncode == 0, result.stderr
            assert result.stdout.rstrip().endswith("no tensorflow"), argv


def test_logs_and_ssh_config_never_import_tensorflow(gcs_bucket: str, tmp_path: Path) -> None:
    storage.write_bytes(f"gs://{gcs_bucket}/logs/startup.log", b"step driver: done\n")
    logs = _workload("logs", "startup", "--bucket", gcs_bucket, cwd=tmp_path)
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout.rstrip().endswith("no tensorflow")

    config = ["ssh-config", "--group", "projects/p/regions/r/instanceGroupManagers/g"]
    entry = _workload(*config, "--name", "kgg-dev", "--user", "me", "--print", cwd=tmp_path)
    assert entry.returncode == 0, entry.stderr
    assert entry.stdout.rstrip().endswith("no tensorflow")


def test_tensorboard_mirror_never_imports_tensorflow(gcs_bucket: str, tmp_path: Path) -> None:
    storage.write_bytes(f"gs://{gcs_bucket}/runs/r1/tensorboard/head/train/events.1", b"e")
    result = _workload(
        "tensorboard", "r1", "--no-serve", "--bucket", gcs_bucket, "--cache", "tb", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "tb" / gcs_bucket / "r1/head/train/events.1").read_bytes() == b"e"
    assert result.stdout.rstrip().endswith("no tensorflow")


# Every command `kgg` has, in the order its help lists them (kgg/cli/main.py COMMANDS).
EVERY_COMMAND = [
    "init", "train", "predict", "demo", "upload", "status", "pull", "runs", "logs", "tensorboard",
    "start", "stop", "ssh", "notebook", "ssh-proxy", "ssh-config", "submit", "sweep", "cancel",
]  # fmt: skip


@pytest.mark.parametrize("program", ["console script", "python -m kgg"])
def test_help_lists_every_command(program: str, tmp_path: Path) -> None:
    """The installed `kgg` (the console script uv put beside this interpreter) and `python -m
    kgg`, run outside the checkout, list every command."""
    script = Path(sys.executable).with_name("kgg")
    if program == "console script" and not script.is_file():
        pytest.fail(f"{script} is missing: `uv sync` installs the kgg console script")
    command = [str(script)] if program == "console script" else [sys.executable, "-m", "kgg"]
    result = subprocess.run(
        [*command, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    listed = result.stdout.split("{", 1)[1].split("}", 1)[0].split(",")
    assert listed == EVERY_COMMAND
    assert all(f"\n    {name} " in result.stdout for name in EVERY_COMMAND)


def test_building_the_parser_imports_no_tensorflow_nor_the_google_clients() -> None:
    probe = (
        "import sys, kgg.cli.main as m; m.build_parser().format_help(); "
        "print(sorted(n for n in sys.modules if n.split('.')[0] in ('tensorflow', 'google')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert (result.returncode, result.stdout) == (0, "[]\n"), result.stderr
