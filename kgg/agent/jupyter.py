"""The jupyter step: a non-root user, a self-signed certificate made once on the VM, the password
hash from Secret Manager, the config and the unit, then JupyterLab (re)started and waited for.
JupyterLab is not enabled: the boot starts it once the driver and the env are verified, so it
never comes up on a half-installed machine."""

from __future__ import annotations

import os
import secrets
import ssl
import time
import urllib.error
import urllib.request

from kgg.agent.agent import Agent, StepFailed
from kgg.agent.config import (
    JUPYTER_RUNTIME_DIRECTORY,
    JUPYTER_UNIT,
    NOTEBOOK_USER,
    PASSWORD_REFRESH_TIMER,
    PASSWORD_REFRESH_UNIT,
    WORKSPACE_FINAL_UNIT,
    WORKSPACE_SYNC_TIMER,
    WORKSPACE_SYNC_UNIT,
    Paths,
    VmSettings,
)
from kgg.agent.units import render, write_if_changed
from kgg.agent.workspace import FINAL_SYNC_SECONDS, SYNC_SECONDS, workspace_command
from kgg.common.contract import RUNS_PREFIX, TLS_FINGERPRINT_ATTRIBUTE
from kgg.common.vm_runtime import CloudError

# JupyterLab's first start imports a large env; give it this long to answer.
START_SECONDS = 180
POLL_SECONDS = 3
# How soon a changed password reaches JupyterLab (one Secret Manager read each time).
PASSWORD_REFRESH_SECONDS = 300


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
    """The user and its home. Root touches only the home folder itself (its parent, /home, is
    root's, so no link can stand in for it); what is inside is the user's, and root never writes
    there: the workspace is made by the user (`prepare_workspace`)."""
    paths = agent.paths
    if not agent.system.user_exists(NOTEBOOK_USER):
        agent.log.info("creating user %s", NOTEBOOK_USER)
        agent.system.create_user(NOTEBOOK_USER, paths.notebook_home)
    paths.notebook_home.mkdir(parents=True, exist_ok=True)
    agent.system.chown(f"{NOTEBOOK_USER}:{NOTEBOOK_USER}", paths.notebook_home)


def prepare_workspace(agent: Agent) -> None:
    """As the notebook user: the workspace folder (a link in its place moved aside) and the
    walkthrough copied in once. A notebook-user process may swap any of it for a link at any
    moment; running as that user, the copy can land only where the user may write anyway."""
    paths = agent.paths
    walkthrough = paths.on_vm(paths.app / "kgg/agent/notebooks/walkthrough.ipynb")
    result = agent.system.run(
        workspace_command(paths, "prepare", "--walkthrough", walkthrough), check=False
    )
    for line in result.stdout.splitlines():
        agent.log.info("%s", line)
    if result.returncode != 0:
        raise StepFailed(
            f"the notebook user could not make its workspace {paths.on_vm(paths.workspace)}: "
            f"{((result.stderr or '').strip().splitlines() or ['no output'])[-1]}",
            f"look at {paths.on_vm(paths.notebook_home)} (ls -la), or stop and start the VM",
        )


def ensure_tls_certificate(agent: Agent, *, new: bool = False) -> bool:
    """Made once, or again when `new` (a password change: whoever held the old password could
    read the old key). The pair is written beside and renamed in, so JupyterLab never reads half
    of it. Its fingerprint goes to the status and to a guest attribute (`publish_fingerprint`)
    for the user to check what the browser shows. True when it made one."""
    paths = agent.paths
    if not new and paths.tls_cert.is_file() and paths.tls_key.is_file():
        return False
    agent.log.info("generating a self-signed TLS certificate")
    paths.tls_cert.parent.mkdir(parents=True, exist_ok=True)
    cert, key = (path.with_name(f".{path.name}.new") for path in (paths.tls_cert, paths.tls_key))
    san = []
    if agent.instance.external_ip:
        san = ["-addext", f"subjectAltName=IP:{agent.instance.external_ip}"]
    agent.system.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:3072", "-sha256", "-nodes", "-days", "3650",
         "-subj", "/CN=keras-gpu-gcp", *san, "-keyout", str(key), "-out", str(cert)],
    )  # fmt: skip
    cert.chmod(0o644)
    key.chmod(0o600)
    agent.system.chown(f"{NOTEBOOK_USER}:{NOTEBOOK_USER}", key)
    os.replace(key, paths.tls_key)
    os.replace(cert, paths.tls_cert)
    return True


def tls_fingerprint(agent: Agent) -> str:
    line = agent.system.run(
        ["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", str(agent.paths.tls_cert)]
    ).stdout.strip()
    return line.partition("=")[2]


def publish_fingerprint(agent: Agent) -> str:
    """The certificate's SHA-256 into the status document and the guest attribute the laptop's
    `status` trusts (only a process on this VM can write guest attributes, not a bucket
    writer); returns it."""
    fingerprint = tls_fingerprint(agent)
    agent.status.update(f"tls_sha256={fingerprint}")
    try:
        agent.metadata.put_guest_attribute(TLS_FINGERPRINT_ATTRIBUTE, fingerprint)
    except CloudError as error:
        agent.log.warning("the TLS fingerprint is not published as a guest attribute: %s", error)
    return fingerprint


def write_password_hash(agent: Agent) -> bool:
    """The hash from Secret Manager into the file the config reads; True when it changed."""
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


def apply_password(agent: Agent) -> bool:
    """The newest hash from Secret Manager, and on a change of an earlier one a new TLS key too:
    the old key was readable to whoever held the old password. True when JupyterLab must
    restart to use them."""
    replacing = agent.paths.password_hash.is_file()
    changed = write_password_hash(agent)
    if changed and replacing:
        agent.log.info("the Jupyter password changed: a new TLS key and certificate too")
        ensure_tls_certificate(agent, new=True)
    return changed


def _write_token(agent: Agent, *, new: bool = False) -> None:
    """A new API token (256 random bits) whenever JupyterLab is about to (re)start: at every boot,
    and with `new` at a restart (a password change: the server also takes the token as a login
    password, so the old holder's copy must stop working). A rerun of the script by hand that
    restarts nothing keeps the running server's."""
    token = agent.paths.api_token
    running = agent.system.is_active(JUPYTER_UNIT)
    if not new and running and token.is_file() and token.read_text().strip():
        return
    write_if_changed(token, secrets.token_hex(32) + "\n", 0o640)
    agent.system.chown(f"root:{NOTEBOOK_USER}", token)


def env_line(key: str, value: str) -> str:
    """`KEY="value"` for a systemd EnvironmentFile: quoted, and refused if it could break a line."""
    if any(ord(char) < 32 or ord(char) == 127 for char in value):
        raise StepFailed(f"{key} {value!r} has a control character", "check the stack settings")
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'{key}="{escaped}"\n'


def _write_environment(agent: Agent) -> bool:
    instance = agent.instance
    text = "".join(
        env_line(key, value)
        for key, value in (
            ("KGG_BUCKET", instance.bucket),
            ("KGG_DATA", f"gs://{instance.bucket}/{agent.settings.data_path}"),
            ("KGG_RUN_ID", instance.run_id),
            ("KGG_RUNS", f"gs://{instance.bucket}/{RUNS_PREFIX.removesuffix('/')}"),
        )
    )
    return write_if_changed(agent.paths.jupyter_env, text, 0o600)


def jupyter_unit(paths: Paths) -> str:
    """kgg-jupyter.service: JupyterLab as the notebook user, configured only by root's files."""
    return render(
        f"{JUPYTER_UNIT}.j2",
        user=NOTEBOOK_USER,
        workspace=paths.on_vm(paths.workspace),
        env_file=paths.on_vm(paths.jupyter_env),
        venv_bin=paths.on_vm(paths.venv_bin),
        app=paths.on_vm(paths.app),
        config=paths.on_vm(paths.jupyter_config),
        config_dir=paths.on_vm(paths.jupyter_config_dir),
        home=paths.on_vm(paths.notebook_home),
        runtime=paths.on_vm(paths.jupyter_runtime),
        runtime_directory=JUPYTER_RUNTIME_DIRECTORY,
    )


def _write_units(agent: Agent) -> bool:
    """JupyterLab's unit (True when it changed) and the timer that restarts it with a new
    password: a changed password must not wait for a reboot to revoke the old one."""
    paths = agent.paths
    unit = jupyter_unit(paths)
    refresh = {"app": paths.on_vm(paths.app), "python": paths.on_vm(paths.venv_python)}
    if agent.instance.workspace_url:
        workspace = refresh | {"user": NOTEBOOK_USER, "home": paths.on_vm(paths.notebook_home)}
        for name, extra in (
            (WORKSPACE_SYNC_UNIT, {}),
            (WORKSPACE_SYNC_TIMER, {"period": SYNC_SECONDS}),
            (WORKSPACE_FINAL_UNIT, {"deadline": FINAL_SYNC_SECONDS}),
        ):
            write_if_changed(paths.units / name, render(f"{name}.j2", **workspace, **extra))
    write_if_changed(
        paths.units / PASSWORD_REFRESH_UNIT,
        render(
            f"{PASSWORD_REFRESH_UNIT}.j2",
            **refresh,
            state=paths.on_vm(paths.state),
            jupyter_conf=paths.on_vm(paths.jupyter),
        ),
    )
    write_if_changed(
        paths.units / PASSWORD_REFRESH_TIMER,
        render(f"{PASSWORD_REFRESH_TIMER}.j2", period=PASSWORD_REFRESH_SECONDS),
    )
    return write_if_changed(paths.units / JUPYTER_UNIT, unit)


def _log_unit(agent: Agent, unit: str) -> None:
    """What systemd says of a unit, into the log (the status document shows its tail)."""
    status = agent.system.systemctl("status", "--no-pager", "--lines=0", unit, check=False)
    journal = agent.system.run(["journalctl", "-u", unit, "-n", "20", "--no-pager"], check=False)
    agent.log.error("%s\n%s", status.stdout.strip(), journal.stdout.strip())


def restore_workspace(agent: Agent) -> str:
    """The notebooks back from the bucket before JupyterLab starts (a VM may be new, in another
    zone), and the syncs on; returns a note for the step's detail."""
    url = agent.instance.workspace_url
    if url is None or agent.paths.workspace_restored.exists():  # none, or a rerun at this boot
        return ""
    result = agent.system.run(workspace_command(agent.paths, "restore"), check=False, timeout=900)
    said = (result.stdout or result.stderr).strip().splitlines()[-1:] or ["no output"]
    if result.returncode != 0:
        agent.log.warning("the workspace was not restored from %s: %s", url, result.stderr)
        return f"; workspace NOT restored from {url} ({said[0]}): syncing is off this boot"
    agent.paths.workspace_restored.parent.mkdir(parents=True, exist_ok=True)
    agent.paths.workspace_restored.touch()
    return f"; {said[0]}"


def setup(agent: Agent) -> str:
    """The jupyter step; returns its detail for the status document."""
    ensure_notebook_user(agent)
    workspace_note = restore_workspace(agent)
    prepare_workspace(agent)
    changed = apply_password(agent)
    ensure_tls_certificate(agent)
    agent.paths.jupyter_config_dir.mkdir(parents=True, exist_ok=True)
    changed = (
        write_if_changed(agent.paths.jupyter_config, jupyter_config(agent.settings)) or changed
    )
    changed = _write_environment(agent) or changed
    changed = _write_units(agent) or changed
    agent.system.systemctl("daemon-reload")
    agent.system.systemctl("enable", "--now", PASSWORD_REFRESH_TIMER)
    if agent.instance.workspace_url:
        agent.system.systemctl("enable", "--now", WORKSPACE_SYNC_TIMER, WORKSPACE_FINAL_UNIT)
    environment = agent.marked("python-env")
    verb = "restart" if changed or agent.marked("python-env-jupyter") != environment else "start"
    _write_token(agent, new=verb == "restart")
    if verb == "restart" or not agent.system.is_active(JUPYTER_UNIT):
        started = agent.system.systemctl(verb, JUPYTER_UNIT, check=False)
        if started.returncode != 0:
            _log_unit(agent, JUPYTER_UNIT)
            raise StepFailed(
                f"`systemctl {verb} {JUPYTER_UNIT}` failed: {started.stderr.strip()}",
                f"its unit's log is in log_tail; journalctl -u {JUPYTER_UNIT}",
            )
    agent.mark("python-env-jupyter", environment or "")
    local = f"https://127.0.0.1:{agent.settings.notebook_port}"
    deadline = time.monotonic() + START_SECONDS
    while not agent.jupyter_answers(local):
        if time.monotonic() >= deadline:
            _log_unit(agent, JUPYTER_UNIT)
            raise StepFailed(
                f"JupyterLab does not answer on {local}", f"journalctl -u {JUPYTER_UNIT}"
            )
        time.sleep(POLL_SECONDS)
    url = f"https://{agent.instance.external_ip or '127.0.0.1'}:{agent.settings.notebook_port}"
    if agent.settings.notebook_access == "iap":  # the firewall admits only IAP's tunnels
        url = f"https://localhost:{agent.settings.notebook_port} (kgg notebook)"
    agent.status.update(f"notebook_url={url}")
    publish_fingerprint(agent)
    return f"JupyterLab at {url} (user {NOTEBOOK_USER}){workspace_note}"


def refresh_password(agent: Agent) -> bool:
    """`python -m kgg.agent refresh-password` (its timer): a changed hash is written and
    JupyterLab restarted with a new TLS key, so the old password and whatever its holder left in
    JupyterLab's folders stop working. True when it changed."""
    if not apply_password(agent):
        return False
    agent.log.info("the Jupyter password changed: restarting JupyterLab (running kernels stop)")
    if agent.system.is_active(JUPYTER_UNIT):
        _write_token(agent, new=True)
        agent.system.systemctl("restart", JUPYTER_UNIT)
    publish_fingerprint(agent)
    return True
