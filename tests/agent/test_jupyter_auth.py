"""A real Jupyter Server on 127.0.0.1 with the config the startup script writes: password and
TLS enforced, the API token the idle check uses accepted, nothing else."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from jupyter_server.auth import passwd

from kgg.agent.idle import fetch_jupyter
from kgg.agent.jupyter import jupyter_config
from kgg.startup.render import vm_settings
from tests.startup.harness import settings_for

PASSWORD = "correct horse battery staple"
STARTUP_SECONDS = 60
REQUEST_SECONDS = 10


@dataclass(frozen=True)
class Server:
    url: str
    port: int
    cert: str
    token: str
    pid: int


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(folder: Path, port: int, token: str) -> Path:
    """The layout the agent writes: config, password.hash, api-token and tls/ side by side."""
    (folder / "tls").mkdir(parents=True)
    config = folder / "jupyter_server_config.py"
    config.write_text(jupyter_config(vm_settings(settings_for(notebookPort=port))))
    (folder / "password.hash").write_text(passwd(PASSWORD) + "\n")
    (folder / "api-token").write_text(token + "\n")
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-sha256", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(folder / "tls/jupyter.key"), "-out", str(folder / "tls/jupyter.crt"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return config


def wait_until_serving(process: subprocess.Popen, url: str, cert: str, log: Path) -> None:
    """Until the server answers over TLS; the test fails with its log if it exits or never does."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        if process.poll() is not None:
            pytest.fail(f"jupyter server exited: {log.read_text()}")
        try:
            requests.get(f"{url}/api/status", verify=cert, timeout=2)
            return
        except requests.RequestException:
            if time.monotonic() > deadline:
                pytest.fail(f"no answer in {STARTUP_SECONDS}s: {log.read_text()}")
            time.sleep(0.3)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("jupyter")
    port = free_port()
    token = secrets.token_hex(32)
    config = write_config(base / "etc", port, token)
    workspace = base / "work"
    workspace.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith("JUPYTER")} | {
        "HOME": str(base),
        "JUPYTER_CONFIG_DIR": str(base / "config"),
        "JUPYTER_DATA_DIR": str(base / "data"),
        "JUPYTER_RUNTIME_DIR": str(base / "runtime"),
    }
    # The config binds 0.0.0.0 on the VM; a test binds loopback only. It refuses root (the VM
    # runs it as the jupyter user); a test in a root container has to allow it.
    command = [sys.executable, "-m", "jupyter_server", f"--config={config}"]
    command.append("--ServerApp.ip=127.0.0.1")
    if os.geteuid() == 0:
        command.append("--ServerApp.allow_root=True")
    log = (base / "server.log").open("w")
    process = subprocess.Popen(
        command,
        cwd=workspace,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    cert = str(base / "etc/tls/jupyter.crt")
    url = f"https://127.0.0.1:{port}"
    try:
        wait_until_serving(process, url, cert, base / "server.log")
        yield Server(url=url, port=port, cert=cert, token=token, pid=process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


def login(server: Server, password: str) -> tuple[requests.Session, requests.Response]:
    session = requests.Session()
    session.trust_env = False  # no proxy, and no CA bundle from the environment over `verify`
    session.verify = server.cert
    session.get(f"{server.url}/login", timeout=REQUEST_SECONDS)
    response = session.post(
        f"{server.url}/login",
        data={"password": password, "_xsrf": session.cookies.get("_xsrf", "")},
        allow_redirects=False,
        timeout=REQUEST_SECONDS,
    )
    return session, response


def test_unauthenticated_api_call_is_refused(server: Server) -> None:
    response = requests.get(f"{server.url}/api/status", verify=server.cert, timeout=REQUEST_SECONDS)
    assert response.status_code in (401, 403)


def test_wrong_password_is_refused(server: Server) -> None:
    session, response = login(server, "not the password")
    assert response.status_code == 401
    status = session.get(f"{server.url}/api/status", timeout=REQUEST_SECONDS)
    assert status.status_code in (401, 403)


def test_right_password_gets_in(server: Server) -> None:
    session, response = login(server, PASSWORD)
    assert response.status_code == 302
    status = session.get(f"{server.url}/api/status", timeout=REQUEST_SECONDS)
    assert status.status_code == 200
    assert "connections" in status.json()


def test_plain_http_gets_no_answer(server: Server) -> None:
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://127.0.0.1:{server.port}/api/status", timeout=REQUEST_SECONDS)


def test_idle_check_reads_the_api_with_the_token_over_pinned_tls(server: Server) -> None:
    status, kernels = fetch_jupyter(server.url, server.token, server.cert)
    assert status is not None
    assert kernels == []


def test_idle_check_with_a_wrong_token_gets_nothing(server: Server) -> None:
    assert fetch_jupyter(server.url, "wrong-token", server.cert) == (None, None)


def test_idle_check_does_not_count_as_notebook_activity(server: Server) -> None:
    """The idle check reads the very activity time it must not move (it did: the VM never
    powered off while JupyterLab ran)."""
    before, _ = fetch_jupyter(server.url, server.token, server.cert)
    time.sleep(1.1)  # Jupyter's timestamps have sub-second resolution; leave no doubt
    fetch_jupyter(server.url, server.token, server.cert)
    after, _ = fetch_jupyter(server.url, server.token, server.cert)
    assert before is not None and after is not None
    assert after["last_activity"] == before["last_activity"]


def test_a_tracked_api_call_does_move_the_activity_time(server: Server) -> None:
    """The other side of the test above: the server does track ordinary API requests."""
    before, _ = fetch_jupyter(server.url, server.token, server.cert)
    time.sleep(1.1)
    response = requests.get(
        f"{server.url}/api/kernels",
        headers={"Authorization": f"token {server.token}"},
        verify=server.cert,
        timeout=REQUEST_SECONDS,
    )
    assert response.status_code == 200
    after, _ = fetch_jupyter(server.url, server.token, server.cert)
    assert before is not None and after is not None
    assert after["last_activity"] > before["last_activity"]


def test_the_api_token_is_nowhere_in_the_servers_environment(server: Server) -> None:
    """Kernels inherit the server's environment: the token reaches the server by its config."""
    environment = Path(f"/proc/{server.pid}/environ").read_bytes().split(b"\0")
    assert not [item for item in environment if item.startswith(b"JUPYTER_TOKEN")]
    assert server.token.encode() not in b"\0".join(environment)
    status, _ = fetch_jupyter(server.url, server.token, server.cert)
    assert status is not None  # and yet the token works
