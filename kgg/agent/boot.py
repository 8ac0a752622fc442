"""`python -m kgg.agent boot`: the boot steps after the Python environment exists, run by the
startup script once its own steps (preflight, driver, python) are done. Each step checks the real
state first and reports to the status document; the first failure stops the boot."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

from kgg.agent import hostkeys, jupyter, logsync, stop
from kgg.agent.agent import Agent, StepFailed
from kgg.agent.config import IDLE_TIMER, LOG_SYNC_UNIT, TRAINING_UNIT, expected_gpus
from kgg.agent.job_state import read_job_state
from kgg.agent.notify import step_failed
from kgg.agent.units import render, write_if_changed
from kgg.common.vm_runtime import CloudError

COUNT_GPUS = 'import tensorflow as tf; print(len(tf.config.list_physical_devices("GPU")))'


def driver_diagnostics(agent: Agent) -> None:
    """nvidia-smi and the kernel's NVIDIA lines, into the log (the status shows its tail)."""
    smi = agent.system.run(["nvidia-smi"], check=False)
    kernel = agent.system.run(["dmesg"], check=False)
    lines = [line for line in kernel.stdout.splitlines() if "nvrm" in line.lower()
             or "nvidia" in line.lower() or "nouveau" in line.lower()]  # fmt: skip
    agent.log.info(
        "--- nvidia-smi\n%s\n--- kernel log (NVRM/nvidia)\n%s",
        (smi.stdout + smi.stderr).strip(),
        "\n".join(lines[-20:]),
    )


def gpu_check(agent: Agent) -> str:
    names = agent.system.gpu_names()
    agent.status.update("gpus=" + "\n".join(names))
    result = agent.system.run([str(agent.paths.venv_python), "-c", COUNT_GPUS], check=False)
    with agent.paths.log.open("a") as log:
        log.write(result.stderr)
    lines = result.stdout.strip().splitlines()
    seen = lines[-1] if lines else ""
    wanted = expected_gpus(agent.settings)
    if seen != str(wanted):
        driver_diagnostics(agent)
        raise StepFailed(
            f"TensorFlow sees {seen or 'no'} GPU(s); expected {wanted} {agent.settings.gpu_name}",
            f"the driver log tail is in log_tail; {agent.settings.tensorflow_build} needs "
            "driver >= 525",
        )
    return f"TensorFlow sees {seen} GPU(s)"


def _write_training_unit(agent: Agent) -> None:
    paths = agent.paths
    unit = render(
        f"{TRAINING_UNIT}.j2",
        app=paths.on_vm(paths.app),
        python=paths.on_vm(paths.venv_python),
        state=paths.on_vm(paths.state),
        home=paths.on_vm(paths.notebook_home),
    )
    write_if_changed(paths.units / TRAINING_UNIT, unit)


def training(agent: Agent) -> str | None:
    """Starts the training service (it waits for the data); None when the step is skipped."""
    run_id = agent.instance.run_id
    if not agent.settings.run_training:
        agent.system.systemctl("stop", TRAINING_UNIT, check=False)
        agent.status.update("training=off")
        return None
    if agent.marked(f"training-done-{run_id}") is not None:
        agent.status.update("training=done")
        return f"run {run_id} finished at an earlier boot"
    _write_training_unit(agent)
    agent.system.systemctl("daemon-reload")
    if agent.system.is_active(TRAINING_UNIT):
        # The script was run again by hand while the job runs: keep what the job last reported.
        state = read_job_state(agent.paths.job_state).state
        if state == "off":
            state = "running"
        elif state == "waiting":
            state = f"waiting for data at gs://{agent.instance.bucket}/{agent.settings.data_path}/"
        agent.status.update(f"training={state}")
        return f"service {TRAINING_UNIT} already running for run {run_id}"
    agent.system.systemctl("start", TRAINING_UNIT)
    return f"service {TRAINING_UNIT} started for run {run_id}"


def idle(agent: Agent) -> str | None:
    """The timer the startup script installed, and the check that the VM may stop itself (in
    its group, when idle shutdown or shutdownAfterTraining is on); None when neither is on."""
    minutes, after_training = (
        agent.settings.idle_shutdown_minutes,
        agent.settings.shutdown_after_training,
    )
    if minutes == 0:
        agent.system.systemctl("disable", "--now", IDLE_TIMER, check=False)
    else:
        agent.system.systemctl("enable", "--now", IDLE_TIMER)
    if minutes == 0 and not after_training:
        return None
    if agent.instance.group:
        agent.log.info("idle: %s", stop.check_stop_path(agent))
    if minutes == 0:
        return "stops when the training run ends"
    return f"stops after {minutes} idle minutes"


STEPS: tuple[tuple[str, Callable[[Agent], str | None]], ...] = (
    ("gpu-check", gpu_check),
    ("jupyter", jupyter.setup),
    ("training", training),
    ("idle", idle),
)
SKIP_REASONS = {"training": "runTraining is false", "idle": "idleShutdownMinutes is 0"}


def start_log_sync(agent: Agent) -> None:
    """The loop that mirrors the logs to the bucket; the boot goes on without it (its log
    is still in the status document's tail and the serial console)."""
    changed = logsync.write_unit(agent.paths)
    agent.system.systemctl("daemon-reload", check=False)
    verb = "restart" if changed else "start"
    result = agent.system.systemctl("enable", LOG_SYNC_UNIT, check=False)
    if result.returncode == 0:
        result = agent.system.systemctl(verb, LOG_SYNC_UNIT, check=False)
    if result.returncode != 0:
        agent.log.warning("%s did not start: %s", LOG_SYNC_UNIT, (result.stderr or "").strip())


def publish_host_keys(agent: Agent) -> None:
    """The SSH host keys for the laptop's ssh entry to pin; the boot goes on without them (that
    entry then refuses this VM, saying why)."""
    try:
        published = hostkeys.publish(agent.paths, agent.metadata)
    except (CloudError, OSError) as error:
        agent.log.warning("SSH host keys not published as guest attributes: %s", error)
        return
    agent.log.info("SSH host keys published (guest attributes hostkeys/): %s",
                   ", ".join(published) or "none found")  # fmt: skip


def boot(agent: Agent) -> int:
    """Runs the steps in order; 0 when all are done, 1 at the first failure. The startup log
    goes to the bucket at every step end."""
    start_log_sync(agent)
    publish_host_keys(agent)
    mirror = logsync.LogMirror(agent.instance.bucket, {agent.paths.log: logsync.STARTUP_LOG_OBJECT})
    for name, step in STEPS:
        agent.log.info("step %s: start", name)
        agent.status.update(f"phase={name}", f"step.{name}=running")
        try:
            detail = step(agent)
        except (StepFailed, subprocess.SubprocessError, OSError, RuntimeError) as error:
            step_failed(agent, name, error)
            mirror.sync()
            return 1
        if detail is None:
            detail = SKIP_REASONS[name]
            agent.log.info("step %s: skipped: %s", name, detail)
            agent.status.update(f"step.{name}=skipped", f"detail.{name}={detail}")
        else:
            agent.log.info("step %s: done: %s", name, detail)
            agent.status.update(f"step.{name}=done", f"detail.{name}={detail}")
        mirror.sync()
    phase = "training" if agent.system.is_active(TRAINING_UNIT) else "done"
    agent.status.update(f"phase={phase}")
    agent.log.info("boot: all steps done")
    mirror.sync()
    return 0
