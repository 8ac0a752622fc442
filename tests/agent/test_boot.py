"""`python -m kgg.agent boot`: the steps after the env (gpu-check, jupyter, training, idle)."""

from __future__ import annotations

import dataclasses
import hashlib
import ssl
import stat
from pathlib import Path

import pytest

from kgg.agent import jupyter
from kgg.agent.agent import Agent, StepFailed
from kgg.agent.boot import boot
from kgg.agent.job_state import write_job_state
from kgg.common.vm_runtime import CloudError
from tests.agent.conftest import FakeSystem, uploaded_status
from tests.startup.harness import BUCKET, EXTERNAL_IP, PASSWORD_HASH, RUN_ID

UNITS = "etc/systemd/system"
AGENT_STEPS = ("gpu-check", "jupyter", "training", "idle")


def fingerprint(cert: str) -> str:
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert)).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def test_boot_brings_every_step_up(agent: Agent, system: FakeSystem) -> None:
    assert boot(agent) == 0

    status = uploaded_status(agent.instance.bucket)
    assert {name: status["steps"][name]["state"] for name in AGENT_STEPS} == dict.fromkeys(
        AGENT_STEPS, "done"
    )
    assert status["phase"] == "training"
    assert status["gpus"] == ["Tesla T4"]
    assert status["notebook_url"] == f"https://{EXTERNAL_IP}:8888"
    assert status["tls_sha256"] == fingerprint(agent.paths.tls_cert.read_text())
    assert status["error"] is None
    assert {"kgg-jupyter.service", "kgg-training.service", "kgg-idle-check.timer"} <= system.active


def test_status_is_uploaded_at_every_step(agent: Agent, history: list[dict]) -> None:
    assert boot(agent) == 0

    running = {
        name for doc in history for name, s in doc["steps"].items() if s["state"] == "running"
    }
    assert running == set(AGENT_STEPS)


def test_jupyter_runs_as_a_non_root_user_with_tls_and_the_secret_hash(
    agent: Agent, system: FakeSystem
) -> None:
    assert boot(agent) == 0

    paths = agent.paths
    unit = (paths.units / "kgg-jupyter.service").read_text()
    assert "User=jupyter" in unit
    assert "ExecStart=/opt/keras-gpu-gcp/venv/bin/jupyter lab --config=" in unit
    assert "EnvironmentFile=/etc/keras-gpu-gcp/jupyter.env" in unit
    config = paths.jupyter_config.read_text()
    assert "c.ServerApp.certfile" in config
    assert "c.ServerApp.port = 8888" in config
    assert paths.password_hash.read_text().strip() == PASSWORD_HASH
    assert stat.S_IMODE(paths.password_hash.stat().st_mode) == 0o640
    assert ["chown", "--no-dereference", "root:jupyter", str(paths.password_hash)] in system.calls
    assert stat.S_IMODE(paths.jupyter_env.stat().st_mode) == 0o600
    assert f'KGG_DATA="gs://{BUCKET}/data/plant-seedlings"\n' in paths.jupyter_env.read_text()
    assert stat.S_IMODE(paths.tls_key.stat().st_mode) == 0o600
    cert = paths.tls_cert.read_text()
    assert (
        f"IP Address:{EXTERNAL_IP}"
        in system.run(["openssl", "x509", "-noout", "-text", "-in", str(paths.tls_cert)]).stdout
    )
    assert cert.startswith("-----BEGIN CERTIFICATE-----")
    assert system.called("useradd")


def test_jupyter_api_token_is_new_at_every_boot_and_never_in_the_environment(
    agent: Agent, system: FakeSystem
) -> None:
    assert boot(agent) == 0
    token = agent.paths.api_token.read_text().strip()
    system.active.clear()  # the reboot

    assert boot(agent) == 0

    again = agent.paths.api_token.read_text().strip()
    assert len(again) == 64 and int(again, 16) and again != token
    assert stat.S_IMODE(agent.paths.api_token.stat().st_mode) == 0o640
    assert ["chown", "--no-dereference", "root:jupyter", str(agent.paths.api_token)] in system.calls
    assert again not in agent.paths.jupyter_env.read_text()
    assert "JUPYTER_TOKEN" not in agent.paths.jupyter_env.read_text()
    assert (
        'c.IdentityProvider.token = (_here / "api-token")' in agent.paths.jupyter_config.read_text()
    )


def test_running_the_boot_again_keeps_jupyters_token(agent: Agent, system: FakeSystem) -> None:
    assert boot(agent) == 0
    token = agent.paths.api_token.read_text()
    system.calls.clear()

    assert boot(agent) == 0  # JupyterLab still runs: the script was run again by hand

    assert agent.paths.api_token.read_text() == token
    assert system.called("systemctl", "restart", "kgg-jupyter.service") == []


def test_a_workspace_that_is_a_link_is_moved_aside_and_never_followed(
    agent: Agent, system: FakeSystem
) -> None:
    """`ln -s /opt/keras-gpu-gcp/app/startup ~/work` from a Jupyter terminal must not make root's
    code the notebook user's."""
    code = agent.paths.app / "startup"
    code.mkdir(parents=True)
    agent.paths.notebook_home.mkdir(parents=True)
    agent.paths.workspace.symlink_to(code)

    assert boot(agent) == 0

    workspace = agent.paths.workspace
    assert workspace.is_dir() and not workspace.is_symlink()
    moved = list(agent.paths.notebook_home.glob("work.moved-*"))
    assert len(moved) == 1 and moved[0].is_symlink()
    chowned = [arg for call in system.called("chown") for arg in call[3:]]
    assert str(code) not in chowned
    assert all(call[1] == "--no-dereference" for call in system.called("chown"))
    assert not (code / "walkthrough.ipynb").exists()


def test_root_makes_only_the_home_and_the_notebook_user_its_workspace(
    agent: Agent, system: FakeSystem
) -> None:
    assert boot(agent) == 0

    home = agent.paths.notebook_home
    chowned = [Path(arg) for call in system.called("chown") for arg in call[3:]]
    assert [path for path in chowned if path.is_relative_to(home)] == [home]
    prepare = system.called("runuser", "-u", "jupyter", "--")
    assert [call[-4:] for call in prepare] == [
        ["workspace", "prepare", "--walkthrough",
         "/opt/keras-gpu-gcp/app/kgg/agent/notebooks/walkthrough.ipynb"],
    ]  # fmt: skip
    assert (agent.paths.workspace / "walkthrough.ipynb").read_text() == '{"cells": []}\n'


def test_a_walkthrough_link_in_the_workspace_is_left_alone(agent: Agent) -> None:
    victim = agent.paths.app / "kgg/agent/idle.py"
    victim.parent.mkdir(parents=True, exist_ok=True)  # the notebooks live beside it
    victim.write_text("root's code\n")
    agent.paths.workspace.mkdir(parents=True)
    (agent.paths.workspace / "walkthrough.ipynb").symlink_to(victim)

    assert boot(agent) == 0

    assert victim.read_text() == "root's code\n"


@pytest.mark.parametrize("value", ["data\nLD_PRELOAD=/tmp/evil.so", "data\r", "a\x00b"])
def test_environment_values_that_could_break_a_line_are_refused(value: str) -> None:
    from kgg.agent.jupyter import env_line

    with pytest.raises(StepFailed, match="control character"):
        env_line("KGG_DATA", value)


def test_environment_values_are_quoted_for_systemd() -> None:
    from kgg.agent.jupyter import env_line

    assert env_line("KGG_DATA", 'gs://b/a "quoted" \\ path') == (
        'KGG_DATA="gs://b/a \\"quoted\\" \\\\ path"\n'
    )


def test_a_changed_password_restarts_jupyter_without_a_reboot(
    agent: Agent, system: FakeSystem
) -> None:
    from kgg.agent.jupyter import refresh_password

    assert boot(agent) == 0
    assert "kgg-password-refresh.timer" in system.active
    system.calls.clear()
    assert refresh_password(agent) is False
    assert system.called("systemctl", "restart", "kgg-jupyter.service") == []
    agent = dataclasses.replace(agent, read_password_hash=lambda secret: "argon2:$argon2id$new")

    assert refresh_password(agent) is True

    assert agent.paths.password_hash.read_text() == "argon2:$argon2id$new\n"
    assert system.called("systemctl", "restart", "kgg-jupyter.service")
    unit = (agent.paths.units / "kgg-password-refresh.service").read_text()
    assert "ExecStart=/opt/keras-gpu-gcp/venv/bin/python -m kgg.agent refresh-password" in unit


def test_a_password_change_brings_a_new_tls_key_and_api_token_and_publishes_them(
    agent: Agent, system: FakeSystem
) -> None:
    """Whoever held the old password could read the key and the token (the server also takes
    the token as a login password): neither may outlive the change."""
    from kgg.agent.jupyter import refresh_password

    assert boot(agent) == 0
    key, token = agent.paths.tls_key.read_text(), agent.paths.api_token.read_text()
    fingerprint = uploaded_status(agent.instance.bucket)["tls_sha256"]
    agent = dataclasses.replace(agent, read_password_hash=lambda secret: "argon2:$argon2id$new")

    assert refresh_password(agent) is True

    assert agent.paths.tls_key.read_text() != key
    assert agent.paths.api_token.read_text() != token
    assert stat.S_IMODE(agent.paths.tls_key.stat().st_mode) == 0o600
    status = uploaded_status(agent.instance.bucket)
    assert status["tls_sha256"] != fingerprint
    assert status["tls_sha256"] == jupyter.tls_fingerprint(agent)
    assert sorted(path.name for path in agent.paths.tls_key.parent.iterdir()) == [
        "jupyter.crt", "jupyter.key"
    ]  # fmt: skip


def test_the_servers_config_data_and_ipython_folders_are_out_of_the_users_reach(
    agent: Agent,
) -> None:
    assert boot(agent) == 0

    unit = (agent.paths.units / "kgg-jupyter.service").read_text()
    environment = dict(
        line.removeprefix("Environment=").split("=", 1)
        for line in unit.splitlines()
        if line.startswith("Environment=")
    )
    assert environment["JUPYTER_CONFIG_DIR"] == "/etc/keras-gpu-gcp/jupyter/config"
    assert agent.paths.jupyter_config_dir.is_dir()
    assert list(agent.paths.jupyter_config_dir.iterdir()) == []
    for key in ("JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
        assert environment[key].startswith("/run/kgg-jupyter/"), key
    assert environment["PYTHONNOUSERSITE"] == "1"
    assert "RuntimeDirectory=kgg-jupyter\n" in unit


def test_a_further_boot_restarts_nothing_and_makes_no_new_certificate(
    agent: Agent, system: FakeSystem
) -> None:
    assert boot(agent) == 0
    cert = agent.paths.tls_cert.read_text()
    system.active.clear()  # the reboot
    system.calls.clear()

    assert boot(agent) == 0

    assert system.called("useradd") == []
    assert system.called("openssl", "req") == []
    assert agent.paths.tls_cert.read_text() == cert
    assert system.called("systemctl", "restart", "kgg-jupyter.service") == []
    assert system.called("systemctl", "start", "kgg-jupyter.service")


def test_a_new_environment_restarts_jupyter_and_keeps_the_users_notebook(
    agent: Agent, system: FakeSystem
) -> None:
    assert boot(agent) == 0
    workspace_copy = agent.paths.workspace / "walkthrough.ipynb"
    workspace_copy.write_text('{"cells": ["mine"]}\n')
    agent.paths.marker("python-env").write_text("b" * 64 + "\n")  # the script installed a new env
    (agent.paths.app / "kgg/agent/notebooks/walkthrough.ipynb").write_text('{"new": true}\n')
    system.calls.clear()

    assert boot(agent) == 0

    assert system.called("systemctl", "restart", "kgg-jupyter.service")
    assert workspace_copy.read_text() == '{"cells": ["mine"]}\n'


def test_a_changed_password_restarts_jupyter(agent: Agent, system: FakeSystem) -> None:
    assert boot(agent) == 0
    system.calls.clear()
    agent = dataclasses.replace(agent, read_password_hash=lambda secret: "argon2:$argon2id$new")

    assert boot(agent) == 0

    assert agent.paths.password_hash.read_text() == "argon2:$argon2id$new\n"
    assert system.called("systemctl", "restart", "kgg-jupyter.service")


def test_jupyter_that_never_answers_fails_its_step(
    agent: Agent, system: FakeSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jupyter, "START_SECONDS", 0)
    agent = dataclasses.replace(agent, jupyter_answers=lambda url: False)

    assert boot(agent) == 1

    error = uploaded_status(agent.instance.bucket)["error"]
    assert error["step"] == "jupyter"
    assert error["message"] == "JupyterLab does not answer on https://127.0.0.1:8888"
    assert "journalctl -u kgg-jupyter.service" in error["hint"]


def test_unreadable_password_secret_fails_the_jupyter_step_naming_it(agent: Agent) -> None:
    def refused(secret: str) -> str:
        raise CloudError(f"could not read the Jupyter password hash from Secret Manager "
                         f"({secret}): HTTP Error 403: Forbidden")  # fmt: skip

    agent = dataclasses.replace(agent, read_password_hash=refused)

    assert boot(agent) == 1

    error = uploaded_status(agent.instance.bucket)["error"]
    assert error["step"] == "jupyter"
    assert "Secret Manager" in error["message"] and "403" in error["message"]
    assert "Secret Manager API" in error["hint"]
    assert not agent.paths.password_hash.exists()


def test_gpu_count_mismatch_fails_with_the_driver_log(agent: Agent, system: FakeSystem) -> None:
    system.tensorflow_gpus = "0"

    assert boot(agent) == 1

    status = uploaded_status(agent.instance.bucket)
    assert status["error"]["step"] == "gpu-check"
    assert status["error"]["message"] == "TensorFlow sees 0 GPU(s); expected 1 NVIDIA T4"
    assert "NVRM: test kernel log line" in status["error"]["log_tail"]
    assert status["steps"]["jupyter"]["state"] == "pending"
    assert "kgg-jupyter.service" not in system.active


def test_expected_gpu_count_can_be_lowered_for_the_real_boot_suite(
    agent: Agent, system: FakeSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    system.tensorflow_gpus = "0"
    monkeypatch.setenv("KGG_EXPECTED_GPUS", "0")

    assert boot(agent) == 0


def test_training_off_skips_the_job(agent: Agent, system: FakeSystem) -> None:
    settings = dataclasses.replace(agent.settings, run_training=False, idle_shutdown_minutes=0)

    assert boot(dataclasses.replace(agent, settings=settings)) == 0

    status = uploaded_status(agent.instance.bucket)
    assert status["steps"]["training"]["state"] == "skipped"
    assert status["steps"]["training"]["detail"] == "runTraining is false"
    assert status["steps"]["idle"]["state"] == "skipped"
    assert status["training"] == "off"
    assert status["phase"] == "done"
    assert "kgg-training.service" not in system.active
    assert system.called("systemctl", "disable", "--now", "kgg-idle-check.timer")


def test_training_unit_runs_the_agents_training_job(agent: Agent) -> None:
    assert boot(agent) == 0

    unit = (agent.paths.units / "kgg-training.service").read_text()
    assert "ExecStart=/opt/keras-gpu-gcp/venv/bin/python -m kgg.agent training-job" in unit
    assert "Environment=PYTHONPATH=/opt/keras-gpu-gcp/app" in unit


def test_finished_run_is_not_started_again(agent: Agent, system: FakeSystem) -> None:
    agent.mark(f"training-done-{RUN_ID}")

    assert boot(agent) == 0

    assert system.called("systemctl", "start", "kgg-training.service") == []
    status = uploaded_status(agent.instance.bucket)
    assert status["training"] == "done"
    assert status["phase"] == "done"
    assert status["steps"]["training"]["detail"] == f"run {RUN_ID} finished at an earlier boot"


def test_running_the_boot_again_keeps_the_running_jobs_status(
    agent: Agent, system: FakeSystem
) -> None:
    system.active.add("kgg-training.service")
    write_job_state(agent.paths.job_state, "waiting")

    assert boot(agent) == 0

    status = uploaded_status(agent.instance.bucket)
    assert status["training"] == f"waiting for data at gs://{BUCKET}/data/plant-seedlings/"
    assert system.called("systemctl", "start", "kgg-training.service") == []


def test_idle_step_enables_the_timer(agent: Agent, system: FakeSystem) -> None:
    assert boot(agent) == 0

    assert "kgg-idle-check.timer" in system.active
    detail = uploaded_status(agent.instance.bucket)["steps"]["idle"]["detail"]
    assert detail == "stops after 60 idle minutes"


def with_workspace(agent: Agent) -> Agent:
    instance = dataclasses.replace(agent.instance, workspace_prefix="workspace/")
    return dataclasses.replace(agent, instance=instance)


def test_the_workspace_comes_back_as_the_notebook_user_before_jupyter_starts(
    agent: Agent, system: FakeSystem
) -> None:
    agent = with_workspace(agent)

    assert boot(agent) == 0

    restore = next(
        i for i, call in enumerate(system.calls) if call[-2:] == ["workspace", "restore"]
    )
    start = system.calls.index(["systemctl", "restart", "kgg-jupyter.service"])
    assert restore < start
    assert system.calls[restore][:4] == ["runuser", "-u", "jupyter", "--"]
    assert agent.paths.workspace_restored.exists()
    assert {"kgg-workspace-sync.timer", "kgg-workspace-final.service"} <= system.active
    final = (agent.paths.units / "kgg-workspace-final.service").read_text()
    assert "User=jupyter" in final
    assert (
        "ExecStop=/opt/keras-gpu-gcp/venv/bin/python -m kgg.agent workspace sync --deadline 20"
        in final
    )
    sync = (agent.paths.units / "kgg-workspace-sync.service").read_text()
    assert "User=jupyter" in sync and "workspace sync" in sync
    # JupyterLab's own unit is intact beside them (a real boot found it overwritten once).
    assert (
        "ExecStart=/opt/keras-gpu-gcp/venv/bin/jupyter lab --config="
        in (agent.paths.units / "kgg-jupyter.service").read_text()
    )


def test_a_workspace_that_cannot_be_restored_keeps_syncing_off(
    agent: Agent, system: FakeSystem
) -> None:
    agent = with_workspace(agent)
    system.failing.append("workspace restore")

    assert boot(agent) == 0  # JupyterLab still comes up: the user can work

    assert not agent.paths.workspace_restored.exists()
    detail = uploaded_status(agent.instance.bucket)["steps"]["jupyter"]["detail"]
    assert "workspace NOT restored from gs://" in detail


HARDENED = {"ProtectSystem": "strict", "PrivateTmp": "yes", "NoNewPrivileges": "yes"}


def unit_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            settings.setdefault(key, []).append(value)
    return settings


def test_the_root_services_see_the_os_read_only_and_write_only_what_they_must(
    agent: Agent,
) -> None:
    """Log sync, the password refresh, the training supervisor and the idle check run as root:
    a bug or a hostile input in one cannot rewrite the OS, gain privileges or reach /home."""
    from kgg.startup.render import render_startup_script
    from tests.startup.harness import settings_for

    assert boot(agent) == 0
    script = render_startup_script(settings_for())
    idle = script.split("kgg-idle-check.service\" <<'KGG_UNIT'\n", 1)[1].split("KGG_UNIT", 1)[0]
    units = {
        name: unit_settings((agent.paths.units / name).read_text())
        for name in ("kgg-log-sync.service", "kgg-password-refresh.service",
                     "kgg-training.service")
    } | {"kgg-idle-check.service": unit_settings(idle)}  # fmt: skip

    for name, settings in units.items():
        for key, value in HARDENED.items():
            assert settings.get(key) == [value], (name, key)
    state = "/var/lib/keras-gpu-gcp"
    assert units["kgg-log-sync.service"]["ReadWritePaths"] == [state]
    assert units["kgg-log-sync.service"]["ProtectHome"] == ["yes"]
    refresh = units["kgg-password-refresh.service"]
    assert refresh["ReadWritePaths"] == [f"{state} /etc/keras-gpu-gcp/jupyter"]
    assert refresh["ProtectHome"] == ["yes"]
    training = units["kgg-training.service"]
    assert (training["ReadWritePaths"], training["ProtectHome"]) == ([state], ["tmpfs"])
    assert training["BindPaths"] == ["/home/jupyter"]  # the job's caches, as the notebook user
    idle_check = units["kgg-idle-check.service"]
    assert (idle_check["ReadWritePaths"], idle_check["ProtectHome"]) == ([state], ["tmpfs"])
    assert idle_check["BindReadOnlyPaths"] == ["-/home/jupyter"]  # the last workspace sync
