"""`kgg notebook|ssh-proxy|ssh-config` through the real entry point: the gcloud invocations
as argument lists (a stub `gcloud` on PATH records them), the VM found through the fake Compute
Engine, and ~/.ssh/config on a temporary HOME."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from kgg.cli.gce import ENDPOINT_ENV

from .conftest import run_workload
from .fake_gce import GROUP_PATH, running_fake

VM, ZONE, PROJECT = "kgg-dev-0a1b2c-7kq2", "us-central1-b", "kgg-demo-project"
STUB = """#!/bin/sh
python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@" >> "{log}"
if [ "$1 $2" = "config get-value" ]; then echo alice@example.com; fi
"""


@pytest.fixture
def gcloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A stub gcloud first on PATH; yields the file its argument lists go to, one per line."""
    bin_dir, log = tmp_path / "bin", tmp_path / "gcloud-calls.jsonl"
    bin_dir.mkdir()
    stub = bin_dir / "gcloud"
    stub.write_text(STUB.format(log=log))
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with running_fake("running") as fake:
        monkeypatch.setenv(ENDPOINT_ENV, fake.url)
        yield log


def calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_notebook_opens_an_iap_tunnel_to_the_vm_where_gce_put_it(
    gcloud: Path, tmp_path: Path
) -> None:
    result = run_workload("notebook", "--group", GROUP_PATH, "--no-open", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert calls(gcloud) == [
        ["compute", "start-iap-tunnel", VM, "8888", "--local-host-port=localhost:8888",
         "--zone", ZONE, "--project", PROJECT],
    ]  # fmt: skip
    assert "JupyterLab: https://localhost:8888 (through IAP to kgg-dev-0a1b2c-7kq2" in result.stdout


def test_notebook_can_use_other_ports(gcloud: Path, tmp_path: Path) -> None:
    argv = ["--group", GROUP_PATH, "--no-open", "--port", "9443", "--local-port", "18888"]
    assert run_workload("notebook", *argv, cwd=tmp_path).returncode == 0
    assert calls(gcloud)[0][2:4] == [VM, "9443"]
    assert "--local-host-port=localhost:18888" in calls(gcloud)[0]


def test_ssh_proxy_becomes_the_tunnel_on_stdin(gcloud: Path, tmp_path: Path) -> None:
    result = run_workload("ssh-proxy", "--group", GROUP_PATH, "--port", "22", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert calls(gcloud) == [
        ["compute", "start-iap-tunnel", VM, "22", "--listen-on-stdin", "--zone", ZONE,
         "--project", PROJECT, "--verbosity=warning"],
    ]  # fmt: skip


def test_ssh_config_writes_one_marked_entry_and_is_idempotent(gcloud: Path, tmp_path: Path) -> None:
    config = tmp_path / "home" / ".ssh" / "config"
    argv = ("ssh-config", "--group", GROUP_PATH, "--name", "kgg-dev")
    first = run_workload(*argv, cwd=tmp_path)
    text = config.read_text()
    second = run_workload(*argv, cwd=tmp_path)

    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert config.read_text() == text
    assert "unchanged:" in second.stdout
    assert text.count("Host kgg-dev\n") == 1
    assert "  User alice_example_com\n" in text
    proxy = next(line for line in text.splitlines() if "ProxyCommand" in line)
    known = tmp_path / "home" / ".ssh" / "kgg_known_hosts" / "kgg-dev"
    assert proxy.endswith(
        f"-m kgg ssh-proxy --group {GROUP_PATH} --known-hosts {known} "
        "--host-key-alias kgg-dev --port %p"
    )
    assert stat.S_IMODE(config.stat().st_mode) == 0o600


def test_ssh_config_keeps_an_existing_config_byte_for_byte(gcloud: Path, tmp_path: Path) -> None:
    config = tmp_path / "home" / ".ssh" / "config"
    config.parent.mkdir(parents=True)
    before = b"Host work\n\tHostName 10.0.0.1  \r\n# a comment\nMatch all\n  ForwardAgent no"
    config.write_bytes(before)
    argv = ("ssh-config", "--group", GROUP_PATH, "--name", "kgg-dev")

    assert run_workload(*argv, cwd=tmp_path).returncode == 0
    assert run_workload(*argv, "--user", "bob", cwd=tmp_path).returncode == 0

    after = config.read_bytes()
    assert after.startswith(before + b"\n\n# >>> keras-gpu-gcp kgg-dev >>>")
    assert after.count(b"Host kgg-dev\n") == 1 and b"  User bob\n" in after
    assert after.endswith(b"# <<< keras-gpu-gcp kgg-dev <<<\n")


def test_ssh_config_refuses_a_host_name_that_could_inject_options(
    gcloud: Path, tmp_path: Path
) -> None:
    argv = ("ssh-config", "--group", GROUP_PATH, "--name", "x\n  ProxyCommand evil")
    result = run_workload(*argv, cwd=tmp_path)
    assert result.returncode == 2
    assert "must be letters, digits" in result.stderr
    assert not (tmp_path / "home" / ".ssh" / "config").exists()


def test_proxy_command_runs_the_workload_package_of_this_checkout() -> None:
    """ssh runs the ProxyCommand from any folder: its PYTHONPATH must hold this checkout."""
    from kgg.cli import remote, stack

    assert (remote.PROJECT_ROOT / "kgg" / "__main__.py").is_file()
    assert (stack.PROJECT_ROOT / "Pulumi.yaml").is_file()
