"""The rendered startup script, run with bash on a fake VM (tests/startup/harness.py)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.startup.harness import (
    BUCKET,
    EXTERNAL_IP,
    FINGERPRINT,
    KERNEL,
    PASSWORD_HASH,
    PASSWORD_SECRET,
    RUN_ID,
    FakeVm,
    settings_for,
    workload_archive,
)

UNITS = "etc/systemd/system"


@pytest.fixture
def vm(tmp_path: Path) -> FakeVm:
    return FakeVm(tmp_path, settings_for())


def booted_after_driver_reboot(vm: FakeVm) -> FakeVm:
    assert vm.boot().returncode == 0
    vm.reboot()
    second = vm.boot()
    assert second.returncode == 0, second.stderr
    return vm


@pytest.fixture(scope="module")
def up_vm(tmp_path_factory: pytest.TempPathFactory) -> FakeVm:
    """One VM through the driver reboot and up, shared by the tests that only look at it."""
    return booted_after_driver_reboot(FakeVm(tmp_path_factory.mktemp("up"), settings_for()))


def booted_with_driver(vm: FakeVm) -> FakeVm:
    """A VM whose driver already works (skips the reboot), booted once and rebooted."""
    vm.flag("driver-loaded")
    boot = vm.boot()
    assert boot.returncode == 0, boot.stderr
    vm.reboot()
    return vm


def test_first_boot_installs_the_pinned_driver_and_reboots(vm: FakeVm) -> None:
    boot = vm.boot()

    assert boot.returncode == 0, boot.stderr
    assert vm.calls("reboot") == [["reboot"]]
    installed = vm.apt_installed()
    assert "nvidia-headless-no-dkms-580-server" in installed
    assert "linux-modules-nvidia-580-server-gcp" in installed
    assert "linux-image-gcp" in installed
    assert vm.calls("uv") == []
    order = [call[0] for call in vm.calls() if call[0] in ("cloud-init", "apt-get")]
    assert order[0] == "cloud-init"  # apt waits for cloud-init's own package installs
    status = vm.status()
    assert status["phase"] == "driver"
    assert status["steps"]["driver"]["state"] == "running"
    assert status["steps"]["driver"]["detail"].startswith("rebooting")
    assert status["steps"]["python"]["state"] == "pending"


def test_driver_loads_without_reboot_when_modules_exist_for_the_running_kernel(
    vm: FakeVm,
) -> None:
    vm.flag("apt-available", f"linux-modules-nvidia-580-server-{KERNEL}\n")

    boot = vm.boot()

    assert boot.returncode == 0, boot.stderr
    assert vm.calls("reboot") == []
    assert f"linux-modules-nvidia-580-server-{KERNEL}" in vm.apt_installed()
    assert "linux-image-gcp" not in vm.apt_installed()
    assert vm.status()["steps"]["driver"]["state"] == "done"


def test_boot_after_the_driver_reboot_brings_everything_up(up_vm: FakeVm) -> None:
    vm = up_vm

    assert vm.apt_installed() == []
    syncs = [call for call in vm.calls("uv") if "sync" in call]
    app = str(vm.root / "opt/keras-gpu-gcp/app")
    assert syncs == [["uv", "sync", "--directory", app, "--frozen", "--no-dev", "--extra", "vm"]]
    status = vm.status()
    assert {name: step["state"] for name, step in status["steps"].items()} == {
        "preflight": "done",
        "driver": "done",
        "python": "done",
        "gpu-check": "done",
        "jupyter": "done",
        "training": "done",
        "idle": "done",
    }
    assert status["phase"] == "training"
    assert status["gpus"] == ["Tesla T4"]
    assert status["notebook_url"] == f"https://{EXTERNAL_IP}:8888"
    assert status["tls_sha256"] == FINGERPRINT
    assert status["run_id"] == RUN_ID
    assert status["instance"] == "kgg-dev-vm"
    assert status["zone"] == "us-central1-a"
    assert status["error"] is None
    assert vm.flagged("active-kgg-jupyter.service")
    assert vm.flagged("active-kgg-training.service")
    assert vm.flagged("active-kgg-idle-check.timer")


def test_status_document_is_uploaded_at_every_step(up_vm: FakeVm) -> None:
    running = {
        name
        for doc in up_vm.status_history()
        for name, step in doc["steps"].items()
        if step["state"] == "running"
    }
    assert running == {"preflight", "driver", "python", "gpu-check", "jupyter", "training", "idle"}


def test_a_further_boot_repeats_no_install(vm: FakeVm) -> None:
    booted_with_driver(vm)

    boot = vm.boot()

    assert boot.returncode == 0, boot.stderr
    assert vm.apt_installed() == []
    assert [call for call in vm.calls("uv") if "sync" in call] == []
    assert vm.calls("useradd") == []
    assert [call for call in vm.calls("openssl") if call[1] == "req"] == []
    assert vm.calls("reboot") == []
    assert ["systemctl", "restart", "kgg-jupyter.service"] not in vm.calls("systemctl")
    assert ["systemctl", "start", "kgg-jupyter.service"] in vm.calls("systemctl")
    assert vm.status()["steps"]["python"]["detail"].startswith("environment matches")


def test_a_new_archive_hash_reinstalls_the_python_env_and_restarts_jupyter(vm: FakeVm) -> None:
    booted_with_driver(vm)
    archive = workload_archive(notebook='{"cells": [], "new": true}\n')
    vm.put_gcs("code/workload-new.tar.gz", archive)
    vm.set_metadata(
        {
            "instance/attributes/kgg-workload-object": "code/workload-new.tar.gz",
            "instance/attributes/kgg-workload-sha256": hashlib.sha256(archive).hexdigest(),
        }
    )

    boot = vm.boot()

    assert boot.returncode == 0, boot.stderr
    assert [call for call in vm.calls("uv") if "sync" in call]
    assert ["systemctl", "restart", "kgg-jupyter.service"] in vm.calls("systemctl")
    notebook = vm.root / "opt/keras-gpu-gcp/app/workload/notebooks/walkthrough.ipynb"
    assert '"new": true' in notebook.read_text()
    # the user's copy in the workspace is theirs: not overwritten
    assert '"new"' not in (vm.root / "home/jupyter/work/walkthrough.ipynb").read_text()


def test_archive_that_does_not_match_its_hash_fails_the_python_step(vm: FakeVm) -> None:
    vm.flag("driver-loaded")
    vm.put_gcs(f"code/workload-{vm.archive_sha256[:16]}.tar.gz", b"tampered")

    boot = vm.boot()

    assert boot.returncode != 0
    error = vm.status()["error"]
    assert error["step"] == "python"
    assert "does not match kgg-workload-sha256" in error["message"]


def test_jupyter_runs_as_a_non_root_user_with_tls_and_the_secret_hash(up_vm: FakeVm) -> None:
    vm = up_vm

    root = vm.root
    unit = (root / UNITS / "kgg-jupyter.service").read_text()
    assert "User=jupyter" in unit
    assert "jupyter lab --config=" in unit
    config = (root / "etc/keras-gpu-gcp/jupyter/jupyter_server_config.py").read_text()
    assert "c.ServerApp.certfile" in config
    assert "c.ServerApp.port = 8888" in config
    hash_file = root / "etc/keras-gpu-gcp/jupyter/password.hash"
    assert hash_file.read_text().strip() == PASSWORD_HASH
    assert stat.S_IMODE(hash_file.stat().st_mode) == 0o640
    env_file = root / "etc/keras-gpu-gcp/jupyter.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert f"KGG_DATA=gs://{BUCKET}/data/plant-seedlings" in env_file.read_text()
    key = root / "etc/keras-gpu-gcp/jupyter/tls/jupyter.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (root / "home/jupyter/work/walkthrough.ipynb").is_file()
    req = next(call for call in vm.calls("openssl") if call[1] == "req")
    assert f"subjectAltName=IP:{EXTERNAL_IP}" in req


def test_units_call_the_installed_copy_of_the_script(up_vm: FakeVm) -> None:
    units = up_vm.root / UNITS
    copy = up_vm.root / "opt/keras-gpu-gcp/bin/keras-gpu-gcp-startup"
    assert copy.read_text() == up_vm.script.read_text()
    assert f"ExecStart={copy} training-job\n" in (units / "kgg-training.service").read_text()
    assert f"ExecStart={copy} idle-check\n" in (units / "kgg-idle-check.service").read_text()
    timer = (units / "kgg-idle-check.timer").read_text()
    assert "OnUnitActiveSec=300s" in timer
    assert "WantedBy=timers.target" in timer
    assert ["systemctl", "enable", "--now", "kgg-idle-check.timer"] in up_vm.calls("systemctl")


def test_jupyter_api_token_is_random_and_root_only(up_vm: FakeVm) -> None:
    token_file = up_vm.root / "etc/keras-gpu-gcp/jupyter-api-token"
    assert re.fullmatch(r"[0-9a-f]{64}", token_file.read_text())
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    env = (up_vm.root / "etc/keras-gpu-gcp/jupyter.env").read_text()
    assert f"JUPYTER_TOKEN={token_file.read_text()}\n" in env


def test_jupyter_that_never_answers_fails_its_step(vm: FakeVm) -> None:
    vm.flag("driver-loaded")
    vm.fail("curl", "https://127.0.0.1:8888")

    boot = vm.boot()

    assert boot.returncode != 0
    error = vm.status()["error"]
    assert error["step"] == "jupyter"
    assert "does not answer" in error["message"]
    assert "journalctl -u kgg-jupyter.service" in error["hint"]


def test_failing_step_stops_the_script_and_the_status_names_it(vm: FakeVm) -> None:
    vm.flag("driver-loaded")
    vm.fail("uv", "sync")

    boot = vm.boot()

    assert boot.returncode != 0
    status = vm.status()
    assert status["phase"] == "failed"
    assert status["steps"]["python"]["state"] == "failed"
    assert status["steps"]["gpu-check"]["state"] == "pending"
    assert status["error"]["step"] == "python"
    assert "uv" in status["error"]["message"]
    assert "stub uv failure" in status["error"]["log_tail"]
    assert status["error"]["hint"]
    # bounded retries: KGG_RETRY_ATTEMPTS=3
    assert len([call for call in vm.calls("uv") if "sync" in call]) == 3


def test_gpu_count_mismatch_fails_with_the_driver_log(vm: FakeVm) -> None:
    vm.flag("driver-loaded")
    vm.flag("tf-gpus", "0\n")

    boot = vm.boot()

    assert boot.returncode != 0
    error = vm.status()["error"]
    assert error["step"] == "gpu-check"
    assert error["message"] == "TensorFlow sees 0 GPU(s); expected 1 NVIDIA T4"
    assert "NVRM: test kernel log line" in error["log_tail"]


def test_flaky_network_call_succeeds_on_retry(vm: FakeVm) -> None:
    vm.flag("driver-loaded")
    vm.fail("curl", "kgg-bucket", times=2)
    vm.fail("curl", "alt=media", times=1)

    boot = vm.boot()

    assert boot.returncode == 0, boot.stderr
    assert len([call for call in vm.calls("curl") if any("kgg-bucket" in a for a in call)]) == 3
    assert vm.status()["steps"]["python"]["state"] == "done"
    assert "retrying" in boot.stderr


def test_network_that_stays_down_fails_preflight_after_bounded_retries(vm: FakeVm) -> None:
    vm.fail("curl", "kgg-workload-object")

    boot = vm.boot()

    assert boot.returncode != 0
    assert vm.status()["error"]["step"] == "preflight"
    attempts = [c for c in vm.calls("curl") if any("kgg-workload-object" in a for a in c)]
    assert len(attempts) == 3


def test_unsupported_os_fails_preflight_naming_the_os(tmp_path: Path) -> None:
    vm = FakeVm(
        tmp_path,
        settings_for(),
        os_release='PRETTY_NAME="CentOS Stream 9"\nID=centos\nVERSION_ID="9"\n',
    )

    boot = vm.boot()

    assert boot.returncode == 3
    error = vm.status()["error"]
    assert error["step"] == "preflight"
    assert "unsupported OS: CentOS Stream 9" in error["message"]
    assert vm.calls("apt-get") == []


def test_deeplearning_image_uses_its_own_driver(tmp_path: Path) -> None:
    vm = FakeVm(tmp_path, settings_for(image="deeplearning"))
    vm.flag("driver-loaded")

    boot = vm.boot()

    assert boot.returncode == 0, boot.stderr
    assert vm.calls("apt-get") == []
    assert vm.calls("reboot") == []


def test_deeplearning_image_without_a_driver_fails_with_a_hint(tmp_path: Path) -> None:
    vm = FakeVm(tmp_path, settings_for(image="deeplearning"))

    boot = vm.boot()

    assert boot.returncode != 0
    error = vm.status()["error"]
    assert error["step"] == "driver"
    assert "install-nvidia-driver" in error["hint"]
    assert vm.calls("apt-get") == []


def test_driver_that_never_loads_fails_after_two_reboots(vm: FakeVm) -> None:
    for _ in range(3):
        vm.boot()
        vm.clear_calls()  # a reboot that does NOT load the driver

    boot = vm.boot()

    assert boot.returncode != 0
    assert vm.status()["error"]["step"] == "driver"
    assert vm.calls("reboot") == []


def test_training_off_skips_the_job(tmp_path: Path) -> None:
    vm = FakeVm(tmp_path, settings_for(runTraining=False, idleShutdownMinutes=0))
    vm.flag("driver-loaded")

    boot = vm.boot()

    assert boot.returncode == 0, boot.stderr
    status = vm.status()
    assert status["steps"]["training"]["state"] == "skipped"
    assert status["steps"]["idle"]["state"] == "skipped"
    assert status["training"] == "off"
    assert status["phase"] == "done"
    assert not vm.flagged("active-kgg-training.service")
    assert not (vm.root / UNITS / "kgg-idle-check.timer").exists()


def test_training_job_waits_for_data_then_runs_the_workload_command(tmp_path: Path) -> None:
    vm = FakeVm(tmp_path, settings_for(trainingArgs=["--recipe", "guide", "--epochs", "2 3"]))
    vm.flag("driver-loaded")
    assert vm.boot().returncode == 0

    job = vm.run("training-job")

    assert job.returncode == 0, job.stderr
    python = [call[1:] for call in vm.calls("python")]
    wait = next(call for call in python if "wait-for-data" in call)
    assert wait[wait.index("--bucket") + 1] == BUCKET
    train = next(call for call in python if "train" in call)
    assert train == [
        "-m", "workload", "train",
        "--data", f"gs://{BUCKET}/data/plant-seedlings",
        "--out", f"gs://{BUCKET}/runs/{RUN_ID}",
        "--recipe", "guide", "--epochs", "2 3",
    ]  # fmt: skip
    assert vm.calls("runuser")[0][:4] == ["runuser", "-u", "jupyter", "--"]
    history = [doc["training"] for doc in vm.status_history()]
    assert f"waiting for data at gs://{BUCKET}/data/plant-seedlings/" in history
    assert "running" in history
    assert vm.status()["training"] == "done"
    assert vm.status()["phase"] == "done"
    assert not vm.flagged("shutdown")


def test_finished_run_is_not_started_again_at_the_next_boot(vm: FakeVm) -> None:
    vm.flag("driver-loaded")
    assert vm.boot().returncode == 0
    assert vm.run("training-job").returncode == 0
    assert (vm.root / f"var/lib/keras-gpu-gcp/markers/training-done-{RUN_ID}").is_file()
    vm.reboot()

    assert vm.boot().returncode == 0

    assert ["systemctl", "start", "kgg-training.service"] not in vm.calls("systemctl")
    assert vm.status()["training"] == "done"
    assert vm.status()["phase"] == "done"


def test_failed_training_is_reported_and_powers_off_with_shutdown_after_training(
    tmp_path: Path,
) -> None:
    vm = FakeVm(tmp_path, settings_for(shutdownAfterTraining=True))
    vm.flag("driver-loaded")
    assert vm.boot().returncode == 0
    vm.flag("train-rc", "3\n")

    job = vm.run("training-job")

    assert job.returncode == 3
    status = vm.status()
    assert status["training"] == "failed"
    assert status["error"]["step"] == "training"
    assert "epoch 1/1" in status["error"]["log_tail"]
    assert vm.flagged("shutdown")


def test_successful_training_powers_off_with_shutdown_after_training(tmp_path: Path) -> None:
    vm = FakeVm(tmp_path, settings_for(shutdownAfterTraining=True))
    vm.flag("driver-loaded")
    assert vm.boot().returncode == 0

    assert vm.run("training-job").returncode == 0

    assert vm.flagged("shutdown")
    assert vm.status()["training"] == "done"


def test_idle_check_powers_off_when_the_decision_says_so(vm: FakeVm) -> None:
    vm.flag("driver-loaded")
    assert vm.boot().returncode == 0
    vm.flag("idle-rc", "0\n")

    assert vm.run("idle-check").returncode == 0

    assert vm.flagged("shutdown")
    assert vm.status()["phase"] == "idle"
    assert "stub idle reason" in vm.status()["steps"]["idle"]["detail"]


def test_idle_check_stays_up_when_the_decision_says_so(vm: FakeVm) -> None:
    vm.flag("driver-loaded")
    assert vm.boot().returncode == 0

    assert vm.run("idle-check").returncode == 0

    assert not vm.flagged("shutdown")
    idle_call = next(c for c in vm.calls("python") if "idle-check" in c)
    assert idle_call[idle_call.index("--idle-minutes") + 1] == "60"


def test_uv_download_with_a_wrong_hash_fails_the_python_step(vm: FakeVm) -> None:
    vm.flag("driver-loaded")
    (vm.root / "opt/keras-gpu-gcp/bin/uv").unlink()
    (vm.stubs / "files").mkdir()
    (vm.stubs / "files/uv.whl").write_bytes(b"not the pinned wheel")

    boot = vm.boot()

    assert boot.returncode != 0
    error = vm.status()["error"]
    assert error["step"] == "python"
    assert "pinned SHA-256" in error["message"]


def test_loaded_nouveau_is_blacklisted_and_needs_a_reboot(vm: FakeVm) -> None:
    vm.flag("apt-available", f"linux-modules-nvidia-580-server-{KERNEL}\n")
    (vm.root / "sys/module/nouveau").mkdir(parents=True)

    boot = vm.boot()

    assert boot.returncode == 0, boot.stderr
    blacklist = vm.root / "etc/modprobe.d/blacklist-nouveau.conf"
    assert "blacklist nouveau" in blacklist.read_text()
    assert vm.calls("update-initramfs") == [["update-initramfs", "-u"]]
    assert vm.calls("reboot") == [["reboot"]]


def test_debian_12_installs_the_dkms_driver_from_non_free_and_reboots(tmp_path: Path) -> None:
    vm = FakeVm(
        tmp_path,
        settings_for(),
        os_release='PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n',
    )
    sources = vm.root / "etc/apt/sources.list.d/debian.sources"
    sources.parent.mkdir(parents=True)
    sources.write_text("Types: deb\nURIs: https://deb.debian.org/debian\nComponents: main\n")

    boot = vm.boot()

    assert boot.returncode == 0, boot.stderr
    assert "Components: main contrib non-free non-free-firmware" in sources.read_text()
    installed = vm.apt_installed()
    assert {"nvidia-kernel-dkms", "linux-image-cloud-amd64", "linux-headers-cloud-amd64"} <= set(
        installed
    )
    assert vm.calls("reboot") == [["reboot"]]


def _stop_training_job_once(vm: FakeVm, training_state: str) -> subprocess.Popen[str]:
    """Starts the training unit, waits until the status says `training_state`, then stops it
    the way systemd does at shutdown (SIGTERM to the whole unit); returns the finished job."""
    job = vm.start("training-job")
    deadline = time.monotonic() + 20
    while training_state not in vm.status()["training"]:
        assert time.monotonic() < deadline, f"the job never reached {training_state!r}"
        time.sleep(0.1)
    time.sleep(0.3)
    os.killpg(job.pid, signal.SIGTERM)
    job.wait(timeout=20)
    return job


def test_vm_stopping_while_waiting_for_data_is_no_failure(vm: FakeVm) -> None:
    vm.flag("driver-loaded")
    assert vm.boot().returncode == 0
    vm.flag("wait-sleep", "30\n")

    job = _stop_training_job_once(vm, "waiting")

    assert job.returncode == 0
    assert vm.status()["training"].startswith("interrupted")
    assert vm.status()["error"] is None


def test_failure_while_waiting_for_data_is_reported(vm: FakeVm) -> None:
    vm.flag("driver-loaded")
    assert vm.boot().returncode == 0
    vm.flag("wait-rc", "1\n")

    job = vm.run("training-job")

    assert job.returncode != 0
    error = vm.status()["error"]
    assert error["step"] == "training"
    assert "waiting for the data" in error["message"]
    assert [c for c in vm.calls("python") if "train" in c and "workload" in c] == []


def test_running_the_script_again_keeps_the_running_jobs_status(vm: FakeVm) -> None:
    vm.flag("driver-loaded")
    assert vm.boot().returncode == 0
    (vm.root / "var/lib/keras-gpu-gcp/training-job.json").write_text(
        '{"state": "waiting", "activity": "2026-11-27T10:00:00Z"}\n'
    )

    assert vm.boot().returncode == 0  # sudo google_metadata_script_runner startup

    assert vm.status()["training"] == f"waiting for data at gs://{BUCKET}/data/plant-seedlings/"
    assert vm.calls("systemctl").count(["systemctl", "start", "kgg-training.service"]) == 1


def test_idle_check_waits_while_the_startup_script_runs(vm: FakeVm) -> None:
    vm.flag("driver-loaded")
    assert vm.boot().returncode == 0
    vm.flag("idle-rc", "0\n")
    vm.flag("activating-google-startup-scripts.service")

    assert vm.run("idle-check").returncode == 0

    assert not vm.flagged("shutdown")
    assert [c for c in vm.calls("python") if "idle-check" in c] == []


def test_preempted_training_is_recorded_as_interrupted_and_starts_again_next_boot(
    vm: FakeVm,
) -> None:
    vm.flag("driver-loaded")
    assert vm.boot().returncode == 0
    vm.flag("train-sleep", "30\n")

    job = _stop_training_job_once(vm, "running")

    assert job.returncode == 0
    assert vm.status()["training"].startswith("interrupted")
    vm.reboot()
    assert vm.boot().returncode == 0
    assert ["systemctl", "start", "kgg-training.service"] in vm.calls("systemctl")


def test_failed_download_reports_curls_own_error(vm: FakeVm) -> None:
    vm.flag("driver-loaded")
    vm.fail("curl", "alt=media")

    boot = vm.boot()

    assert boot.returncode != 0
    error = vm.status()["error"]
    assert error["step"] == "python"
    object_name = f"code/workload-{vm.archive_sha256[:16]}.tar.gz"
    assert error["message"].startswith(f"could not download gs://{BUCKET}/{object_name}: curl ")
    assert "Failed to connect to gcs.test port 80" in error["message"]
    assert "return 1" not in error["message"]
    assert "Failed to connect to gcs.test port 80" in error["log_tail"]


def test_a_failing_rerun_keeps_what_earlier_boots_reported(vm: FakeVm) -> None:
    """A later failure names its step; the steps it did not reach keep their last state."""
    booted_with_driver(vm)
    assert vm.boot().returncode == 0
    before = vm.status()
    new_archive = workload_archive('{"cells": [], "new": true}\n')
    new_sha = hashlib.sha256(new_archive).hexdigest()
    vm.set_metadata({"instance/attributes/kgg-workload-sha256": new_sha})  # object unchanged

    boot = vm.boot()

    assert boot.returncode != 0
    after = vm.status()
    assert after["phase"] == "failed"
    assert after["error"]["step"] == "python"
    assert after["steps"]["python"]["state"] == "failed"
    for step in ("jupyter", "training", "idle"):
        assert after["steps"][step] == before["steps"][step], step
    for field in ("notebook_url", "tls_sha256", "training"):
        assert after[field] == before[field], field


def test_unwritable_bucket_costs_the_boot_a_bounded_time(vm: FakeVm) -> None:
    """Status uploads that keep failing stop after their budget; the boot itself goes on."""
    vm.flag("driver-loaded")
    vm.fail("curl", "uploadType=media")
    vm.flag("curl-fail-seconds", "1\n")
    env = {"KGG_STATUS_UPLOAD_BUDGET_SECONDS": "3"}

    started = time.monotonic()
    boot = vm.run(env=env)
    elapsed = time.monotonic() - started

    assert boot.returncode == 0, boot.stderr
    uploads = [c for c in vm.calls("curl") if any("uploadType=media" in a for a in c)]
    # two tries per update until 3 s of failures are spent: at most 2 updates x 2 tries
    assert 2 <= len(uploads) <= 4
    assert elapsed < 20
    assert "no more uploads from this run" in boot.stderr
    local = json.loads((vm.root / "var/lib/keras-gpu-gcp/status.json").read_text())
    assert local["phase"] == "training"  # the job started; nothing failed
    assert {step["state"] for step in local["steps"].values()} == {"done"}


def test_image_python_in_the_locked_range_is_used(vm: FakeVm) -> None:
    vm.flag("driver-loaded")
    fake_python(vm, "3.11")

    assert vm.boot().returncode == 0

    env = vm.state.joinpath("uv-env").read_text()
    assert f"UV_PYTHON={vm.root}/usr/bin/python3\n" in env
    assert "UV_PYTHON_PREFERENCE=only-system\n" in env


@pytest.mark.parametrize("version", ["3.10", "3.14"])
def test_image_python_outside_the_locked_range_gets_a_managed_one(vm: FakeVm, version) -> None:
    vm.flag("driver-loaded")
    fake_python(vm, version)

    assert vm.boot().returncode == 0

    env = vm.state.joinpath("uv-env").read_text()
    assert "UV_PYTHON=3.12\n" in env
    assert "UV_PYTHON_PREFERENCE=only-managed\n" in env


def test_uv_cache_shares_the_venvs_files_instead_of_copying_them(vm: FakeVm) -> None:
    vm.flag("driver-loaded")

    assert vm.boot().returncode == 0

    env = vm.state.joinpath("uv-env").read_text()
    assert "UV_LINK_MODE=hardlink\n" in env
    assert f"UV_CACHE_DIR={vm.root}/var/cache/keras-gpu-gcp/uv\n" in env
    assert ["uv", "cache", "prune"] in vm.calls("uv")


def test_debian_12_with_a_one_line_sources_list_gets_non_free(tmp_path: Path) -> None:
    vm = FakeVm(
        tmp_path,
        settings_for(image="debian-12"),
        os_release='PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n',
    )
    sources = vm.root / "etc/apt/sources.list"
    sources.parent.mkdir(parents=True)
    sources.write_text(
        "deb http://deb.debian.org/debian bookworm main\n"
        "deb [signed-by=/k.gpg] http://deb.debian.org/debian-security bookworm-security"
        " main contrib\n"
        "deb https://packages.cloud.google.com/apt cloud-sdk main\n"
    )

    boot = vm.boot()

    assert boot.returncode == 0, boot.stderr
    assert sources.read_text() == (
        "deb http://deb.debian.org/debian bookworm main contrib non-free non-free-firmware\n"
        "deb [signed-by=/k.gpg] http://deb.debian.org/debian-security bookworm-security"
        " main contrib non-free non-free-firmware\n"
        "deb https://packages.cloud.google.com/apt cloud-sdk main\n"
    )
    assert "nvidia-kernel-dkms" in vm.apt_installed()


def fake_python(vm: FakeVm, version: str) -> None:
    """The image's /usr/bin/python3, answering the version query the script asks."""
    python = vm.root / "usr/bin/python3"
    python.parent.mkdir(parents=True, exist_ok=True)
    python.write_text(f"#!/bin/sh\necho {version}\n")
    python.chmod(0o755)


def test_password_hash_comes_from_secret_manager_and_is_never_logged(up_vm: FakeVm) -> None:
    secret_reads = [call for call in up_vm.calls("curl") if any(":access" in arg for arg in call)]
    assert secret_reads
    assert all("/versions/latest:access" in call[-1] for call in secret_reads)
    assert PASSWORD_HASH not in (up_vm.root / "var/lib/keras-gpu-gcp/startup.log").read_text()
    assert PASSWORD_HASH not in json.dumps(up_vm.status())
    assert "kgg-jupyter-password-hash" not in up_vm.script.read_text()


def test_unreadable_password_secret_fails_the_jupyter_step_naming_it(vm: FakeVm) -> None:
    vm.flag("driver-loaded")
    (vm.stubs / "secrets").rename(vm.stubs / "no-secrets")

    boot = vm.boot()

    assert boot.returncode != 0
    error = vm.status()["error"]
    assert error["step"] == "jupyter"
    assert error["message"].startswith(
        f"could not read the Jupyter password hash from Secret Manager ({PASSWORD_SECRET}): curl "
    )
    assert "403" in error["message"]
    assert "Secret Manager API" in error["hint"]


def test_secret_without_an_argon2_hash_is_refused_without_showing_it(vm: FakeVm) -> None:
    vm.flag("driver-loaded")
    vm.put_secret(PASSWORD_SECRET, "my-plaintext-password")

    boot = vm.boot()

    assert boot.returncode != 0
    error = vm.status()["error"]
    assert error["message"] == f"{PASSWORD_SECRET} holds no Jupyter argon2 hash"
    assert "my-plaintext-password" not in json.dumps(vm.status()) + boot.stderr
    assert not (vm.root / "etc/keras-gpu-gcp/jupyter/password.hash").exists()
