"""The VM agent on a temporary root: the commands it runs as root are recorded by FakeSystem
(openssl runs for real), the bucket is the GCS emulator behind its IAM-enforcing front, called
with the VM's identity, Secret Manager and JupyterLab's answer are functions the tests set."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from kgg.agent.agent import Agent
from kgg.agent.cloud import Bucket, Instance
from kgg.agent.config import JUPYTER_UNIT, Paths
from kgg.agent.status import STATUS_OBJECT, StatusReporter
from kgg.agent.system import CommandError, Completed, System
from kgg.common.vm_runtime import Endpoints, Metadata, configure_logging
from kgg.startup.render import vm_settings
from tests.startup.harness import EXTERNAL_IP, PASSWORD_HASH, PASSWORD_SECRET, RUN_ID, settings_for


class FakeSystem(System):
    """Records every command; answers like a VM whose services start and whose GPU works."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.active: set[str] = set()
        self.states: dict[str, str] = {}
        self.users: set[str] = set()
        self.gpus = ["Tesla T4"]
        self.tensorflow_gpus = "1"
        self.failing: list[str] = []
        self.job = "echo 'epoch 1/1'; exit 0"  # the training job's shell stand-in
        self.powered_off: str | None = None
        self.processes: list[subprocess.Popen[str]] = []
        # The VM's root: `workspace prepare` (as the notebook user on a VM) runs for real here.
        self.root: Path | None = None

    def run(
        self, argv: Sequence[str], *, check: bool = True, timeout: float | None = 600
    ) -> Completed:
        argv = [str(arg) for arg in argv]
        self.calls.append(argv)
        if any(pattern in " ".join(argv) for pattern in self.failing):
            result = Completed(argv, 1, "", "stub failure\n")
        else:
            result = self._answer(argv)
        if check and result.returncode != 0:
            raise CommandError(argv, result)
        return result

    def popen(self, argv: Sequence[str], cwd: Path | None = None) -> subprocess.Popen[str]:
        self.calls.append([str(arg) for arg in argv])
        process = subprocess.Popen(
            ["sh", "-c", self.job], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.processes.append(process)
        return process

    def _answer(self, argv: list[str]) -> Completed:
        name = Path(argv[0]).name
        ok = Completed(argv, 0, "", "")
        if name == "runuser" and argv[-4:-2] == ["workspace", "prepare"] and self.root:
            from kgg.agent.workspace import prepare

            source = self.root / argv[-1].lstrip("/")
            notes = prepare(Paths(self.root).workspace, source)
            return Completed(argv, 0, "".join(f"workspace: {n}\n" for n in notes), "")
        if name == "systemctl":
            words = [arg for arg in argv[1:] if not arg.startswith("-")]
            verb, unit, units = words[0], words[-1], set(words[1:])
            if verb == "is-active":
                return Completed(argv, 0 if unit in self.active else 3, "", "")
            if verb in ("start", "restart") or (verb == "enable" and "--now" in argv):
                self.active |= units
            elif verb in ("stop", "disable"):
                self.active -= units
            elif verb == "show":
                state = self.states.get(unit, "active" if unit in self.active else "inactive")
                return Completed(argv, 0, state + "\n", "")
            return ok
        if name == "id":
            return Completed(argv, 0 if argv[-1] in self.users else 1, "", "")
        if name == "useradd":
            self.users.add(argv[-1])
            return ok
        if name == "openssl":
            return subprocess.run(argv, capture_output=True, text=True, check=False)
        if name == "nvidia-smi":
            return Completed(argv, 0, "\n".join(self.gpus) + "\n", "")
        if name == "dmesg":
            return Completed(argv, 0, "NVRM: test kernel log line\n", "")
        if name.startswith("python"):
            return Completed(argv, 0, self.tensorflow_gpus + "\n", "TF log line\n")
        if name == "shutdown":
            self.powered_off = argv[-1]
        return ok

    def called(self, *prefix: str) -> list[list[str]]:
        return [call for call in self.calls if call[: len(prefix)] == list(prefix)]


@pytest.fixture
def system() -> FakeSystem:
    return FakeSystem()


@pytest.fixture
def agent(tmp_path: Path, gcs_bucket: str, system: FakeSystem, as_vm: Any) -> Iterator[Agent]:
    """The agent of a VM whose startup script just handed over (env and code in place); its
    bucket calls go out with the VM's own identity (`as_vm`: objectAdmin on the bucket only)."""
    paths = Paths(tmp_path / "root")
    paths.markers.mkdir(parents=True)
    (paths.app / "kgg/agent/notebooks").mkdir(parents=True)
    (paths.app / "kgg/agent/notebooks/walkthrough.ipynb").write_text('{"cells": []}\n')
    (paths.marker("python-env")).write_text("a" * 64 + "\n")
    configure_logging(paths.log)
    system.root = paths.root
    yield Agent(
        paths=paths,
        settings=vm_settings(settings_for()),
        system=system,
        status=StatusReporter(paths.status, Bucket(gcs_bucket)),
        metadata=Metadata("http://127.0.0.1:9", attempts=1),
        endpoints=Endpoints(metadata="http://127.0.0.1:9", secret_manager="http://127.0.0.1:9"),
        instance=Instance(
            bucket=gcs_bucket,
            run_id=RUN_ID,
            password_secret=PASSWORD_SECRET,
            external_ip=EXTERNAL_IP,
            name="kgg-dev-vm",
            zone="us-central1-a",
        ),
        read_password_hash=lambda secret: PASSWORD_HASH,
        jupyter_answers=lambda url: JUPYTER_UNIT in system.active,
    )


def uploaded_status(bucket: str) -> dict[str, Any]:
    """status/startup.json as the VM last uploaded it."""
    import json

    from tests.iam import client_with, stack

    client = client_with(stack(bucket).owner_token)
    return json.loads(client.bucket(bucket).blob(STATUS_OBJECT).download_as_bytes())


@pytest.fixture
def history(agent: Agent, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict]]:
    """Every status document the agent uploads, in order."""
    seen: list[dict] = []
    upload = agent.status.bucket.upload  # type: ignore[union-attr]

    def recording(name: str, data: bytes, content_type: str) -> None:
        seen.append(json.loads(data))
        upload(name, data, content_type)

    monkeypatch.setattr(agent.status.bucket, "upload", recording)
    yield seen
