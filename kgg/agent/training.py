"""`python -m kgg.agent training-job`, the training service: wait for the data, run the job as
the notebook user, record the result, maybe power off. SIGTERM (the VM stopping: spot
preemption, shutdown) is no failure: the run resumes at the next boot."""

from __future__ import annotations

import signal
import subprocess
import sys
from types import FrameType

from kgg.agent.agent import Agent, StepFailed
from kgg.agent.config import NOTEBOOK_USER, TRAINING_UNIT
from kgg.agent.cost import CostTicker
from kgg.agent.data_wait import wait_for_data
from kgg.agent.job_state import write_job_state
from kgg.agent.logsync import LogMirror, restore_training_log, train_log_object
from kgg.agent.notify import run_ended, step_failed
from kgg.agent.status import log_tail
from kgg.agent.stop import stop_vm
from kgg.common.contract import CLI_NAME, EXIT_RETRY, RUNS_PREFIX

# How often the service looks for the uploaded data (KGG_DATA_POLL_SECONDS in the tests).
DATA_POLL_SECONDS = 30.0
# systemd's TimeoutStopSec for the unit is 120 s: the job gets most of it to save its epoch.
STOP_WAIT_SECONDS = 100.0


class Stopping(Exception):
    """SIGTERM arrived: the VM is stopping."""


def _stop(signum: int, frame: FrameType | None) -> None:
    raise Stopping


def train_command(agent: Agent, data: str, out: str) -> list[str]:
    paths = agent.paths
    return [
        "runuser", "-u", NOTEBOOK_USER, "--", "env", f"HOME={paths.on_vm(paths.notebook_home)}",
        f"PYTHONPATH={paths.on_vm(paths.app)}", paths.on_vm(paths.venv_python),
        "-m", CLI_NAME, "train", "--data", data, "--out", out, *agent.settings.training_args,
    ]  # fmt: skip


def _run_job(agent: Agent, argv: list[str]) -> int:
    """The job with its output in training.log and the journal; on SIGTERM it is given time to
    save its epoch, then Stopping goes on up."""
    with agent.paths.training_log.open("a") as log:
        process = agent.system.popen(argv, cwd=agent.paths.app)
        try:
            assert process.stdout is not None
            for line in process.stdout:
                log.write(line)
                log.flush()
                sys.stderr.write(line)
            return process.wait()
        except Stopping:
            # systemd sent the job SIGTERM too (the whole unit gets it): let it save its epoch,
            # and keep what it says meanwhile.
            try:
                rest, _ = process.communicate(timeout=STOP_WAIT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                rest, _ = process.communicate()
            log.write(rest or "")
            sys.stderr.write(rest or "")
            raise


def _interrupted(agent: Agent) -> int:
    write_job_state(agent.paths.job_state, "interrupted")
    agent.status.update("training=interrupted (VM stopping); resumes at the next boot")
    return 0


def training_job(agent: Agent, *, poll_seconds: float = DATA_POLL_SECONDS) -> int:
    bucket, run_id = agent.instance.bucket, agent.instance.run_id
    data = f"gs://{bucket}/{agent.settings.data_path.strip('/')}"
    out = f"gs://{bucket}/{RUNS_PREFIX}{run_id}"
    restore_training_log(agent.paths, bucket, run_id)
    mirror = LogMirror(bucket, {agent.paths.training_log: train_log_object(run_id)})
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        write_job_state(agent.paths.job_state, "waiting")
        agent.status.update("phase=training", f"training=waiting for data at {data}/")
        try:
            wait_for_data(
                bucket,
                agent.settings.data_path,
                state_file=agent.paths.job_state,
                poll_seconds=poll_seconds,
            )
        except Stopping:
            raise
        except Exception as error:
            step_failed(
                agent,
                "training",
                StepFailed(
                    f"waiting for the data at {data}/ failed: {error}",
                    f"journalctl -u {TRAINING_UNIT}",
                ),
            )
            return 1
        write_job_state(agent.paths.job_state, "running")
        agent.status.update("training=running")
        agent.log.info("training: %s -> %s", data, out)
        returncode = _run_job(agent, train_command(agent, data, out))
    except Stopping:
        return _interrupted(agent)
    finally:
        signal.signal(signal.SIGTERM, previous)
        mirror.sync()
        CostTicker(agent)(force=True)  # the run's last minutes, while its state says running
    if returncode == EXIT_RETRY:  # the job itself was told to stop (SIGTERM): it resumes
        return _interrupted(agent)
    if returncode == 0:
        agent.mark(f"training-done-{run_id}")
        write_job_state(agent.paths.job_state, "done")
        agent.status.update("phase=done", "training=done")
    else:
        write_job_state(agent.paths.job_state, "failed")
        agent.status.update(
            "phase=failed",
            "training=failed",
            "error.step=training",
            f"error.message=kgg train exited with {returncode}",
            f"error.log_tail={log_tail(agent.paths.training_log)}",
            f"error.hint=journalctl -u {TRAINING_UNIT}; the run resumes at the next boot",
        )
    run_ended(agent, "done" if returncode == 0 else "failed")
    if agent.settings.shutdown_after_training:
        agent.log.info("training ended (exit %d); stopping (shutdownAfterTraining)", returncode)
        stop_vm(agent, "stopped: training ended (shutdownAfterTraining)", idle=False)
    return returncode
