"""bootstrap.py `vertex`, run for real as a Vertex AI job's container runs it: the launcher with the
job body's command, arguments and environment (kgg/cli/vertex_jobs.py), on the real code archive
extracted to a temp /opt/kgg/app. The uv wheel is a local zip holding a fake `uv` that records
how it was called and makes the venv's python a recording wrapper of this interpreter: no network,
no download; what runs after it is the archive's real `python -m kgg`."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from kgg.cli import vertex_jobs, vertex_launcher
from kgg.infra.archive import build_archive
from kgg.startup import render

FAKE_UV = f"""#!{sys.executable}
import json, os, shutil, sys
from pathlib import Path
seen = {{k: v for k, v in os.environ.items() if k.startswith("UV_") or k == "PYTHONPATH"}}
with open(os.environ["FAKE_UV_CALLS"], "a") as out:
    out.write(json.dumps({{"argv": sys.argv[1:], "env": seen}}) + "\\n")
if os.environ.get("FAKE_UV_EXIT"):
    print("error: Failed to fetch: https://pypi.org/simple/tensorflow/", file=sys.stderr)
    sys.exit(int(os.environ["FAKE_UV_EXIT"]))
venv = Path(os.environ["UV_PROJECT_ENVIRONMENT"])
(venv / "bin").mkdir(parents=True, exist_ok=True)
shutil.copy(os.environ["FAKE_PYTHON"], venv / "bin" / "python")
"""
# The venv's python: records its call, then is this interpreter (which has the job's packages).
FAKE_PYTHON = f"""#!{sys.executable}
import json, os, sys
seen = {{"argv": sys.argv[1:], "PYTHONPATH": os.environ.get("PYTHONPATH"),
        "trial": os.environ.get("CLOUD_ML_TRIAL_ID")}}
with open(os.environ["FAKE_PYTHON_CALLS"], "a") as out:
    out.write(json.dumps(seen) + "\\n")
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""
UV_SYNC_FLAGS = ["--frozen", "--no-dev", "--no-default-groups", "--extra", "ml", "--extra", "vm",
                 "--no-install-project"]  # fmt: skip


class Container:
    """A temp root laid out as the container: the archive where the FUSE mount has it, the app
    folder the launcher extracts to, the fake uv wheel."""

    def __init__(self, tmp_path: Path) -> None:
        self.base = tmp_path
        self.home = tmp_path / "opt/kgg"
        self.app = self.home / "app"
        archive = build_archive()
        self.archive = tmp_path / "gcs/bucket" / archive.object_name
        self.archive.parent.mkdir(parents=True)
        self.archive.write_bytes(archive.data)
        self.sha256 = archive.sha256
        self.wheel = tmp_path / "uv.whl"
        with zipfile.ZipFile(self.wheel, "w") as wheel:
            wheel.writestr(f"uv-{render.UV_VERSION}.data/scripts/uv", FAKE_UV)
        (tmp_path / "python").write_text(FAKE_PYTHON)
        (tmp_path / "python").chmod(0o755)

    def env(self) -> dict[str, str]:
        """The job body's environment, its paths and uv pin pointed at the temp root and the fake
        wheel, with the fakes' record files."""
        return vertex_jobs.container_env() | {
            "PYTHONPATH": str(self.app),
            "KGG_UV_WHEEL_URL": self.wheel.as_uri(),
            "KGG_UV_WHEEL_SHA256": hashlib.sha256(self.wheel.read_bytes()).hexdigest(),
            "PATH": os.environ["PATH"],
            "KGG_ROOT": str(self.base),  # bootstrap's log file goes under it
            "KGG_RETRY_BASE_SECONDS": "0",
            "CLOUD_ML_TRIAL_ID": "7",  # what Vertex sets reaches the job
            "FAKE_UV_CALLS": str(self.base / "uv-calls.jsonl"),
            "FAKE_PYTHON": str(self.base / "python"),
            "FAKE_PYTHON_CALLS": str(self.base / "python-calls.jsonl"),
        }

    def run(self, *kgg_args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return self.launch([*vertex_jobs.ENTRY_ARGS, *kgg_args], **env)

    def launch(self, entry_args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
        command, args = vertex_launcher.launcher(
            str(self.archive), self.sha256, vertex_jobs.ENTRY, entry_args, str(self.app)
        )
        command[0] = sys.executable  # the image's python3
        return subprocess.run(
            [*command, *args], env=self.env() | env, cwd=self.base, capture_output=True,
            text=True, timeout=120, check=False,
        )  # fmt: skip

    def calls(self, name: str) -> list[dict[str, Any]]:
        path = self.base / f"{name}-calls.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def container(tmp_path: Path) -> Container:
    return Container(tmp_path)


@pytest.mark.parametrize(("kgg_args", "code"), [(["--help"], 0), (["no-such-command"], 2)])
def test_the_job_is_python_m_kgg_in_the_synced_env_and_its_exit_code_the_containers(
    container: Container, kgg_args: list[str], code: int
) -> None:
    done = container.run(*kgg_args)

    assert done.returncode == code, done.stderr
    if code == 0:
        assert done.stdout.startswith("usage: kgg ")
    else:
        assert "invalid choice: 'no-such-command'" in done.stderr
    (sync,) = container.calls("uv")
    # The VM's own `uv sync` (tests/startup/test_startup_behaviour.py holds its argv the same).
    assert sync["argv"] == ["sync", "--directory", str(container.app), *UV_SYNC_FLAGS]
    home = container.home
    assert sync["env"] == {
        "UV_PROJECT_ENVIRONMENT": str(home / "venv"),
        "UV_PYTHON": sys.executable,  # the image's python3: 3.11 is in the locked range
        "UV_PYTHON_PREFERENCE": "only-system",
        "UV_PYTHON_INSTALL_DIR": str(home / "python"),
        "UV_CACHE_DIR": str(home / "uv-cache"),
        "UV_LINK_MODE": "hardlink",
    }  # no PYTHONPATH: uv sees a clean interpreter
    (job,) = container.calls("python")
    assert job == {"argv": ["-m", "kgg", *kgg_args], "PYTHONPATH": str(container.app),
                   "trial": "7"}  # fmt: skip
    assert os.access(home / "bin/uv", os.X_OK) and not (home / "uv.whl").exists()


def test_an_image_python_outside_the_locked_range_gets_uvs_managed_one(
    container: Container,
) -> None:
    minor = sys.version_info[1]
    done = container.run(
        "--help", KGG_PYTHON_MIN=f"3.{minor + 1}", KGG_PYTHON_MAX=f"3.{minor + 2}",
        KGG_MANAGED_PYTHON=f"3.{minor + 1}",
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    (sync,) = container.calls("uv")
    assert (sync["env"]["UV_PYTHON"], sync["env"]["UV_PYTHON_PREFERENCE"]) == (
        f"3.{minor + 1}",
        "only-managed",
    )


def test_a_uv_wheel_of_another_hash_is_refused_in_one_line(container: Container) -> None:
    done = container.run("--help", KGG_UV_WHEEL_SHA256="0" * 64)

    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert line.endswith(
        f"ERROR: {container.wheel.as_uri()} does not match its expected SHA-256 "
        f"{'0' * 16}...: KGG_UV_WHEEL_SHA256 and KGG_UV_WHEEL_URL disagree; submit again from a "
        "checkout whose kgg/startup/render.py pins uv"
    )
    assert container.calls("uv") == [] and container.calls("python") == []


def test_a_failed_sync_is_retried_then_one_line_naming_it_and_the_fix(
    container: Container,
) -> None:
    done = container.run("--help", FAKE_UV_EXIT="3", KGG_RETRY_ATTEMPTS="2")

    assert done.returncode == 1
    assert len(container.calls("uv")) == 2 and container.calls("python") == []
    assert done.stderr.splitlines()[-1].endswith(
        f"ERROR: uv sync of {container.app / 'uv.lock'}: exit 3 (after 2 attempts); uv's output "
        "above says why; the job's network needs outgoing HTTPS to pypi.org and "
        "files.pythonhosted.org"
    )
    assert "error: Failed to fetch" in done.stderr  # uv's own line, in the job's log


def test_a_container_without_the_pins_says_to_submit_again(container: Container) -> None:
    done = container.run("--help", KGG_UV_VERSION="", KGG_PYTHON_MAX="")

    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert line.endswith(
        "ERROR: KGG_UV_VERSION, KGG_PYTHON_MAX not set in the container: it was not created by "
        "this version's `kgg submit` or `kgg sweep`; submit it again"
    )


def test_vertex_takes_the_job_command_after_a_double_dash(container: Container) -> None:
    done = container.launch(["vertex", "train", "x"])

    assert done.returncode == 2
    assert done.stderr.splitlines()[-1].endswith("ERROR: vertex takes -- KGG_ARGS..., not "
                                                 "['train', 'x']")  # fmt: skip


def test_the_jobs_output_reaches_the_runs_train_log_on_the_fuse_mount(
    container: Container,
) -> None:
    model_dir = "gs://bucket/runs/vx-1/model/"
    done = container.run("--help", AIP_MODEL_DIR=model_dir, CLOUD_ML_TRIAL_ID="")

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: kgg ")  # Cloud Logging still gets it
    copied = container.base / "gcs/bucket/runs/vx-1/train.log"  # where `kgg logs vx-1` reads
    assert copied.read_text() == done.stdout


def test_a_sigterm_reaches_the_job_whose_exit_code_and_log_are_the_containers(
    tmp_path: Path,
) -> None:
    """Vertex stops a container with SIGTERM to its first process, the bootstrap: the job must
    get it (it saves its state and exits 75), and the log of that run ends where the job did."""
    # As the job does (kgg/job/runstate.py): the handler raises, the way out saves and says so
    # (a print inside the handler could land in the middle of the job's own print).
    job = (
        "import signal, sys, time\n"
        "class Stop(BaseException): pass\n"
        "def stop(*_): raise Stop\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "try:\n"
        "    print('epoch 1', flush=True)\n"
        "    time.sleep(60)\n"
        "except Stop:\n"
        "    print('saved', flush=True)\n"
        "    sys.exit(75)\n"
    )
    log_file, copy_to = tmp_path / "train.log", tmp_path / "gcs/b/runs/r/train.log"
    parent = (
        "import sys\n"
        "from pathlib import Path\n"
        "from kgg.startup import bootstrap\n"
        f"sys.exit(bootstrap.run_teed([sys.executable, '-c', {job!r}], {{}}, "
        f"Path({str(log_file)!r}), Path({str(copy_to)!r})))\n"
    )
    started = subprocess.Popen(
        [sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True,
        env=os.environ | {"KGG_LOG_COPY_SECONDS": "0.2"},
    )  # fmt: skip
    assert started.stdout is not None
    assert started.stdout.readline() == "epoch 1\n"
    started.send_signal(signal.SIGTERM)
    rest, _ = started.communicate(timeout=30)

    assert started.returncode == 75
    assert rest == "saved\n"
    assert log_file.read_text() == copy_to.read_text() == "epoch 1\nsaved\n"
