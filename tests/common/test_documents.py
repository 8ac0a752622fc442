"""The status document model shared by the startup script's helper, the VM agent and `status`."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from kgg.common import documents
from kgg.common.documents import STEPS, ChangeError, StartupStatus, update_file

ROOT = Path(__file__).resolve().parents[2]
# Run by the image's python3 before any env exists: stdlib only, Python 3.10 (Ubuntu 22.04).
CARRIED = ("kgg/common/documents.py", "kgg/common/vm_runtime.py", "kgg/common/contract.py")
STDLIB_ONLY = (*(ROOT / name for name in CARRIED), ROOT / "kgg/startup/bootstrap.py")


def test_changes_stamp_steps_and_fields() -> None:
    status = StartupStatus()
    status.apply(["phase=python", "step.python=running"], "T1")
    status.apply(["step.python=done", "detail.python=installed", "gpus=Tesla T4\nTesla T4"], "T2")

    assert status.phase == "python"
    step = status.steps["python"]
    assert (step.state, step.started, step.finished, step.detail) == (
        "done",
        "T1",
        "T2",
        "installed",
    )
    assert status.gpus == ["Tesla T4", "Tesla T4"]
    assert status.updated == "T2"


def test_error_fields_set_and_clear() -> None:
    status = StartupStatus()
    status.apply(["error.step=driver", "error.message=no module", "error.hint=reboot"], "T1")
    assert status.error is not None and status.error.message == "no module"

    status.apply(["error="], "T2")

    assert status.error is None


@pytest.mark.parametrize("change", ["nonsense", "color=red", "step.python=exploded", "step.x=done"])
def test_unknown_changes_are_refused_by_name(change: str) -> None:
    with pytest.raises(ChangeError, match=change.replace(".", r"\.")):
        StartupStatus().apply([change], "T")


def test_reading_trusts_nothing() -> None:
    hostile = {
        "phase": 7,
        "steps": {"driver": {"state": "pwned", "detail": ["x"]}, "extra": {"state": "done"}},
        "gpus": "not a list",
        "error": "not an object",
        "unknown": True,
    }

    status = StartupStatus.from_json(hostile)

    assert status.phase == "7"
    assert list(status.steps) == list(STEPS)
    assert status.steps["driver"].state == "pending"
    assert status.steps["driver"].detail == "['x']"
    assert status.gpus == []
    assert status.error is None
    assert StartupStatus.from_json("not even an object") == StartupStatus()


def test_the_document_round_trips_through_json(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    update_file(path, ["step.preflight=done", "notebook_url=https://x:8888", "error.step=x"])

    written = json.loads(path.read_text())

    assert StartupStatus.from_json(written).to_json() == written
    assert written["version"] == documents.VERSION


@pytest.mark.parametrize("path", STDLIB_ONLY, ids=lambda path: path.name)
def test_the_bootstrap_files_parse_as_python_3_10(path: Path) -> None:
    source = path.read_text()
    ast.parse(source, feature_version=(3, 10))
    for newer in ("datetime.UTC", "from datetime import UTC", "tomllib", "typing import Self"):
        assert newer not in source


def test_the_helper_runs_without_the_environment(tmp_path: Path) -> None:
    """`python -S -E` (no site-packages, no PYTHONPATH): what the image's bare python3 has."""
    carried = tmp_path / "bootstrap"
    (carried / "kgg/common").mkdir(parents=True)
    (carried / "kgg/__init__.py").write_text("")
    (carried / "kgg/common/__init__.py").write_text("")
    for name in CARRIED:
        (carried / name).write_text((ROOT / name).read_text())
    (carried / "bootstrap.py").write_text((ROOT / "kgg/startup/bootstrap.py").read_text())
    env = {"KGG_ROOT": str(tmp_path), "PATH": "/usr/bin:/bin"}
    (tmp_path / "var/lib/keras-gpu-gcp").mkdir(parents=True)

    result = subprocess.run(
        [sys.executable, "-S", "-E", str(carried / "bootstrap.py"), "status", "phase=driver"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    written = json.loads((tmp_path / "var/lib/keras-gpu-gcp/status.json").read_text())
    assert written["phase"] == "driver"


def test_progress_written_by_the_job_reads_back_as_the_same_model() -> None:
    from kgg.common.documents import Progress

    written = Progress(
        state="done", recipe="fast", phase="done", epoch=10, epochs=10,
        updated="2026-11-27T10:00:00Z",
        metrics={"accuracy": 0.9, "micro_f1": 0.875, "scored_on": "holdout"},
        fingerprint={"data": {"digest": "ab"}},
    )  # fmt: skip
    document = json.loads(json.dumps(written.to_json()))
    assert document["version"] == 1 and "error" not in document
    assert Progress.from_json(document) == written


def test_progress_from_the_bucket_keeps_only_fields_of_the_right_type() -> None:
    from kgg.common.documents import Progress

    read = Progress.from_json(
        {"state": "exploded", "epoch": "3", "epochs": 2.5, "eta_seconds": float("nan"),
         "images_per_second": True, "metrics": {"loss": 0.5, "bad": [1], "nan": float("inf")}}
    )  # fmt: skip
    assert read == Progress(metrics={"loss": 0.5})
    assert Progress.from_json(["not", "a", "document"]) is None


def test_the_contract_imports_without_the_environment_or_the_project(tmp_path: Path) -> None:
    """Alone in a folder under `python -S -E`: stdlib only, nothing else of kgg needed."""
    (tmp_path / "contract.py").write_text((ROOT / "kgg/common/contract.py").read_text())
    script = "import contract; print(contract.check_run_id('r1'), contract.STATUS_OBJECT)"
    result = subprocess.run(
        [sys.executable, "-S", "-E", "-c", script],
        cwd=tmp_path, env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert (result.returncode, result.stdout) == (0, "r1 status/startup.json\n"), result.stderr
