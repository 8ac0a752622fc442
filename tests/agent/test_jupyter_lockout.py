"""A password change locks a notebook user out for good: a real Jupyter Server started the way the
agent's unit says (its environment, its config, the hash and certificate the agent wrote), after
that user planted a backdoor in ~/.jupyter/jupyter_config.py and a kernelspec in
~/.local/share/jupyter. jupyter_core runs the user's config dir inside the server unless the unit
points it elsewhere."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kgg.agent.agent import Agent
from kgg.agent.boot import boot
from kgg.agent.config import JUPYTER_UNIT, Paths
from kgg.agent.jupyter import refresh_password
from kgg.infra.password import jupyter_password_hash
from tests.kernels import run_in_kernel, start_kernel, stop_kernel

from .test_jupyter_auth import REQUEST_SECONDS, Server, free_port, login, wait_until_serving

OLD_PASSWORD = "the password before the change"
NEW_PASSWORD = "the password after the change"
BACKDOOR = "the notebook user's backdoor"
SALT = "c2FsdHNhbHRzYWx0c2FsdA=="
# Python in ~/.jupyter/jupyter_config.py runs inside the server: it patches the password check.
PLANTED_CONFIG = f"""
from jupyter_server.auth.identity import PasswordIdentityProvider

_check = PasswordIdentityProvider.passwd_check


def _backdoor(self, password):
    return password == {BACKDOOR!r} or _check(self, password)


PasswordIdentityProvider.passwd_check = _backdoor
"""
PLANTED_KERNEL = '{"argv": ["sh", "-c", "touch ~/owned"], "display_name": "planted"}'
PLANTED_STARTUP = "import pathlib; pathlib.Path.home().joinpath('planted-startup-ran').touch()\n"


def unit_environment(unit: str, paths: Paths) -> dict[str, str]:
    """The unit's Environment= lines, with the VM's absolute paths placed under the test root;
    PATH and PYTHONPATH stay the test's (its interpreter runs the server)."""
    environment = {}
    for line in unit.splitlines():
        if not line.startswith("Environment="):
            continue
        key, _, value = line.removeprefix("Environment=").partition("=")
        if key in ("PATH", "PYTHONPATH"):
            continue
        environment[key] = str(paths.root / value.lstrip("/")) if value.startswith("/") else value
    return environment


def exec_config(unit: str, paths: Paths) -> Path:
    start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    config = start.partition("--config=")[2].split()[0]
    return paths.root / config.lstrip("/")


@pytest.fixture
def planted_home(agent: Agent) -> Path:
    """The notebook user's home, with what a notebook user can leave behind."""
    home = agent.paths.notebook_home
    (home / ".jupyter").mkdir(parents=True)
    (home / ".jupyter/jupyter_config.py").write_text(PLANTED_CONFIG)
    kernel = home / ".local/share/jupyter/kernels/planted"
    kernel.mkdir(parents=True)
    (kernel / "kernel.json").write_text(PLANTED_KERNEL)
    startup = home / ".ipython/profile_default/startup"
    startup.mkdir(parents=True)
    (startup / "00-planted.py").write_text(PLANTED_STARTUP)
    return home


@pytest.fixture
def changed(agent: Agent, planted_home: Path) -> Iterator[Server]:
    """Boot with the old password, then the refresh timer's change to the new one; yields the
    server's URL and certificate, started as the unit starts it."""
    old, new = (jupyter_password_hash(password, SALT) for password in (OLD_PASSWORD, NEW_PASSWORD))
    loopback = dataclasses.replace(agent.instance, external_ip="127.0.0.1")  # the cert's address
    agent = dataclasses.replace(agent, instance=loopback, read_password_hash=lambda secret: old)
    assert boot(agent) == 0
    agent = dataclasses.replace(agent, read_password_hash=lambda secret: new)
    assert refresh_password(agent) is True

    paths = agent.paths
    unit = (paths.units / JUPYTER_UNIT).read_text()
    environment = unit_environment(unit, paths)
    for line in unit.splitlines():  # what systemd makes for the unit before it starts it
        if line.startswith("RuntimeDirectory="):
            (paths.root / "run" / line.partition("=")[2]).mkdir(parents=True)
    port = free_port()
    clean = {key: value for key, value in os.environ.items() if not key.startswith("JUPYTER")}
    command = [sys.executable, "-m", "jupyter_server", f"--config={exec_config(unit, paths)}",
               "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}"]  # fmt: skip
    if os.geteuid() == 0:
        command.append("--ServerApp.allow_root=True")
    log = (paths.root / "server.log").open("w")
    process = subprocess.Popen(
        command,
        cwd=paths.workspace,
        env=clean | {"HOME": str(planted_home)} | environment,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url, cert = f"https://127.0.0.1:{port}", str(paths.tls_cert)
    try:
        wait_until_serving(process, url, cert, paths.root / "server.log")
        yield Server(url=url, port=port, cert=cert, token="", pid=process.pid)
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def test_after_a_password_change_only_the_new_password_logs_in(changed: Server) -> None:
    assert login(changed, OLD_PASSWORD)[1].status_code == 401
    assert login(changed, BACKDOOR)[1].status_code == 401
    session, answer = login(changed, NEW_PASSWORD)
    assert answer.status_code == 302
    specs = session.get(f"{changed.url}/api/kernelspecs", timeout=REQUEST_SECONDS)
    assert specs.status_code == 200
    assert "planted" not in specs.json()["kernelspecs"]


def test_a_kernel_started_after_the_change_runs_no_planted_startup_file(
    changed: Server, planted_home: Path
) -> None:
    """Kernels inherit the server's IPYTHONDIR: a startup file the old password's holder left in
    ~/.ipython would run inside every kernel the new one opens."""
    session, _ = login(changed, NEW_PASSWORD)
    kernel = start_kernel(session, changed.url)
    try:
        printed = run_in_kernel(
            session, changed.url, changed.cert, kernel, "import os; print(os.environ['HOME'])"
        )
    finally:
        stop_kernel(session, changed.url, kernel)

    assert printed == f"{planted_home}\n"  # the kernel ran, as the user, with its home
    assert not (planted_home / "planted-startup-ran").exists()
