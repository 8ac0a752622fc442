"""The jupyter step: a non-root user, a self-signed certificate made once on the VM, the password
hash from Secret Manager, the config and the unit, then JupyterLab (re)started and waited for.
JupyterLab is not enabled: the boot starts it once the driver and the env are verified, so it
never comes up on a half-installed machine."""

from __future__ import annotations

import secrets
import ssl
import time
import urllib.error
import urllib.request

from startup.vm.agent import Agent, StepFailed
from startup.vm.config import JUPYTER_UNIT, NOTEBOOK_USER, VmSettings
from startup.vm.system import CommandError
from startup.vm.units import render, write_if_changed

# JupyterLab's first start imports a large env; give it this long to answer.
START_SECONDS = 180
POLL_SECONDS = 3


def jupyter_config(settings: VmSettings) -> str:
    """`jupyter_server_config.py` as the VM runs it (paths are relative to the file itself)."""
    return render(
        "jupyter_server_config.py.j2",
        notebook_port=settings.notebook_port,
        cull_idle_seconds=settings.cull_idle_seconds,
    )


def jupyter_answers(url: str) -> bool:
    """Any HTTP answer over TLS means the server is up (403 is the answer without a login)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(f"{url}/api/status", timeout=5, context=context):
            return True
    except urllib.error.HTTPError as error:
        return 200 <= error.code < 500
    except (OSError, ValueError):
        return False


def ensure_notebook_user(agent: Agent) -> None:
    paths = agent.paths
    if not agent.system.user_exists(NOTEBOOK_USER):
        agent.log.info("creating user %s", NOTEBOOK_USER)
        agent.system.create_user(NOTEBOOK_USER, paths.notebook_home)
    paths.workspace.mkdir(parents=True, exist_ok=True)
    agent.system.chown(f"{NOTEBOOK_USER}:{NOTEBOOK_USER}", paths.notebook_home, paths.workspace)


def ensure_tls_certificate(agent: Agent) -> None:
    """Made once; its fingerprint goes to the status so the user can check what the browser
    shows."""
    paths = agent.paths
    if paths.tls_cert.is_file() and paths.tls_key.is_file():
        return
    agent.log.info("generating the self-signed TLS certificate")
    paths.tls_cert.parent.mkdir(parents=True, exist_ok=True)
    san = []
    if agent.instance.external_ip:
        san = ["-addext", f"subjectAltName=IP:{agent.instance.external_ip}"]
    agent.system.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:3072", "-sha256", "-nodes", "-days", "3650",
         "-subj", "/CN=keras-gpu-gcp", *san,
         "-keyout", str(paths.tls_key), "-out", str(paths.tls_cert)],
    )  # fmt: skip
    paths.tls_cert.chmod(0o644)
    paths.tls_key.chmod(0o600)
    agent.system.chown(f"{NOTEBOOK_USER}:{NOTEBOOK_USER}", paths.tls_key)


def tls_fingerprint(agent: Agent) -> str:
    line = agent.system.run(
        ["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", str(agent.paths.tls_cert)]
    ).stdout.strip()
    return line.partition("=")[2]


def _write_password_hash(agent: Agent) -> bool:
    try:
        password_hash = agent.read_password_hash(agent.instance.password_secret)
    except RuntimeError as error:
        raise StepFailed(
            str(error),
            "is the Secret Manager API enabled and may the VM's service account read the "
            "secret? run pulumi up again",
        ) from error
    changed = write_if_changed(agent.paths.password_hash, password_hash + "\n", 0o640)
    agent.system.chown(f"root:{NOTEBOOK_USER}", agent.paths.password_hash)
    return changed


def _write_environment(agent: Agent) -> bool:
    paths, instance = agent.paths, agent.instance
    if not paths.api_token.is_file() or not paths.api_token.read_text().strip():
        # 256 random bits; Jupyter shows a configured token as "..." in its log.
        paths.api_token.parent.mkdir(parents=True, exist_ok=True)
        write_if_changed(paths.api_token, secrets.token_hex(32), 0o600)
    text = (
        f"JUPYTER_TOKEN={paths.api_token.read_text().strip()}\n"
        f"KGG_BUCKET={instance.bucket}\n"
        f"KGG_DATA=gs://{instance.bucket}/{agent.settings.data_path}\n"
        f"KGG_RUN_ID={instance.run_id}\n"
        f"KGG_RUNS=gs://{instance.bucket}/runs\n"
    )
    return write_if_changed(paths.jupyter_env, text, 0o600)


def _copy_walkthrough(agent: Agent) -> None:
    """Copied once: the user's edits survive reboots and archive updates."""
    source = agent.paths.app / "workload/notebooks/walkthrough.ipynb"
    target = agent.paths.workspace / "walkthrough.ipynb"
    if source.is_file() and not target.exists():
        write_if_changed(target, source.read_text(), 0o644)
        agent.system.chown(f"{NOTEBOOK_USER}:{NOTEBOOK_USER}", target)


def _write_unit(agent: Agent) -> bool:
    paths = agent.paths
    unit = render(
        "kgg-jupyter.service.j2",
        user=NOTEBOOK_USER,
        workspace=paths.on_vm(paths.workspace),
        env_file=paths.on_vm(paths.jupyter_env),
        venv_bin=paths.on_vm(paths.venv_bin),
        app=paths.on_vm(paths.app),
        config=paths.on_vm(paths.jupyter_config),
    )
    return write_if_changed(paths.units / JUPYTER_UNIT, unit)


def setup(agent: Agent) -> str:
    """The jupyter step; returns its detail for the status document."""
    ensure_notebook_user(agent)
    ensure_tls_certificate(agent)
    changed = write_if_changed(agent.paths.jupyter_config, jupyter_config(agent.settings))
    changed = _write_password_hash(agent) or changed
    changed = _write_environment(agent) or changed
    _copy_walkthrough(agent)
    changed = _write_unit(agent) or changed
    agent.system.systemctl("daemon-reload")
    environment = agent.marked("python-env")
    if changed or agent.marked("python-env-jupyter") != environment:
        agent.system.systemctl("restart", JUPYTER_UNIT)
    elif not agent.system.is_active(JUPYTER_UNIT):
        agent.system.systemctl("start", JUPYTER_UNIT)
    agent.mark("python-env-jupyter", environment or "")
    local = f"https://127.0.0.1:{agent.settings.notebook_port}"
    deadline = time.monotonic() + START_SECONDS
    while not agent.jupyter_answers(local):
        if time.monotonic() >= deadline:
            try:
                status = agent.system.systemctl("status", "--no-pager", JUPYTER_UNIT, check=False)
                agent.log.error("%s", status.stdout)
            except CommandError:
                pass
            raise StepFailed(
                f"JupyterLab does not answer on {local}", f"journalctl -u {JUPYTER_UNIT}"
            )
        time.sleep(POLL_SECONDS)
    url = f"https://{agent.instance.external_ip or '127.0.0.1'}:{agent.settings.notebook_port}"
    agent.status.update(f"notebook_url={url}", f"tls_sha256={tls_fingerprint(agent)}")
    return f"JupyterLab at {url} (user {NOTEBOOK_USER})"
