"""The rendered startup script's own part (preflight, driver, Python env, the hand-over to the
agent), run with bash on a fake VM (tests/startup/harness.py): stub system commands, the Google
endpoints on a loopback server, bootstrap.py run by the real python3."""

from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.startup.harness import (
    BUCKET,
    KERNEL,
    PASSWORD_SECRET,
    RUN_ID,
    STATUS,
    FakeVm,
    settings_for,
    workload_archive,
)

UNITS = "etc/systemd/system"
OWN_STEPS = ("preflight", "driver", "python")
UBUNTU = 'PRETTY_NAME="Ubuntu 22.04.5 LTS"\nID=ubuntu\nVERSION_ID="22.04"\n'
DEBIAN = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[FakeVm]:
    with FakeVm(tmp_path, settings_for()) as fake:
        yield fake


def fake_vm(tmp_path: Path, os_release: str | None = None, **settings: object) -> FakeVm:
    return FakeVm(tmp_path, settings_for(**settings), os_release=os_release)


def booted_with_driver(vm: FakeVm) -> FakeVm:
    """A VM whose driver already works (skips the reboot), booted once and rebooted."""
    vm.flag("driver-loaded")
    boot = vm.boot()
    assert boot.returncode == 0, boot.stderr
    vm.reboot()
    return vm


def steps(status: dict) -> dict[str, str]:
    return {name: step["state"] for name, step in status["steps"].items()}


def test_first_boot_installs_the_pinned_driver_and_reboots(vm: FakeVm) -> None:
    boot = vm.boot()

    assert boot.returncode == 0, boot.stderr
    assert vm.calls("reboot") == [["reboot"]]
    installed = vm.apt_installed()
    assert "nvidia-headless-no-dkms-580-server" in installed
    assert "linux-modules-nvidia-580-server-gcp" in installed
    assert "linux-image-gcp" in installed
    assert vm.calls("uv") == []
    assert not vm.handed_over()
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


def test_boot_after_the_driver_reboot_installs_the_env_and_hands_over(vm: FakeVm) -> None:
    assert vm.boot().returncode == 0
    vm.reboot()

    boot = vm.boot()

    assert boot.returncode == 0, boot.stderr
    assert vm.apt_installed() == []
    syncs = [call for call in vm.calls("uv") if "sync" in call]
    app = str(vm.root / "opt/keras-gpu-gcp/app")
    assert syncs == [[
        "uv", "sync", "--directory", app, "--frozen", "--no-dev", "--no-default-groups",
        "--extra", "ml", "--extra", "vm", "--no-install-project",
    ]]  # fmt: skip
    status = vm.status()
    assert {name: steps(status)[name] for name in OWN_STEPS} == dict.fromkeys(OWN_STEPS, "done")
    assert status["steps"]["driver"]["detail"] == "driver present: Tesla T4"
    assert status["run_id"] == RUN_ID
    assert status["instance"] == "kgg-dev-vm"
    assert status["zone"] == "us-central1-a"
    assert status["error"] is None
    assert vm.handed_over()
    assert (app_file := vm.root / "opt/keras-gpu-gcp/app/kgg/agent/__init__.py").is_file()
    assert oct(app_file.stat().st_mode & 0o777) == "0o644"


def test_status_document_is_uploaded_at_every_step(vm: FakeVm) -> None:
    vm.flag("driver-loaded")
    assert vm.boot().returncode == 0

    running = {
        name
        for doc in vm.status_history()
        for name, step in doc["steps"].items()
        if step["state"] == "running"
    }
    assert running == set(OWN_STEPS)
    statuses = [upload for upload in vm.cloud.uploads if upload.name == "status/startup.json"]
    assert statuses and all(upload.content_type == "application/json" for upload in statuses)


def test_the_agent_gets_the_settings_and_the_idle_timer_is_on_before_the_env(vm: FakeVm) -> None:
    vm.fail("uv", "sync")  # the env cannot be installed: a broken VM must still power off
    vm.flag("driver-loaded")

    assert vm.boot().returncode != 0

    settings = json.loads((vm.root / "etc/keras-gpu-gcp/settings.json").read_text())
    assert settings["notebook_port"] == 8888
    assert settings["idle_shutdown_minutes"] == 60
    idle = (vm.root / UNITS / "kgg-idle-check.service").read_text()
    assert "ExecStart=/usr/bin/python3 /opt/keras-gpu-gcp/bootstrap/bootstrap.py idle-check" in idle
    assert "OnUnitActiveSec=300s" in (vm.root / UNITS / "kgg-idle-check.timer").read_text()
    assert vm.flagged("active-kgg-idle-check.timer")


def test_idle_shutdown_off_disables_the_timer(tmp_path: Path) -> None:
    with fake_vm(tmp_path, idleShutdownMinutes=0) as vm:
        vm.flag("driver-loaded")
        vm.flag("active-kgg-idle-check.timer")

        assert vm.boot().returncode == 0

        assert not vm.flagged("active-kgg-idle-check.timer")


def test_a_further_boot_repeats_no_install(vm: FakeVm) -> None:
    booted_with_driver(vm)

    boot = vm.boot()

    assert boot.returncode == 0, boot.stderr
    assert vm.apt_installed() == []
    assert [call for call in vm.calls("uv") if "sync" in call] == []
    assert vm.calls("reboot") == []
    assert vm.cloud.requested("alt=media") == []
    assert vm.status()["steps"]["python"]["detail"].startswith("environment matches")
    assert vm.handed_over()


def test_a_new_archive_hash_reinstalls_the_python_env(vm: FakeVm) -> None:
    booted_with_driver(vm)
    archive = workload_archive(notebook='{"cells": [], "new": true}\n')
    vm.cloud.objects["code/workload-new.tar.gz"] = archive
    vm.set_metadata(
        {
            "instance/attributes/kgg-workload-object": "code/workload-new.tar.gz",
            "instance/attributes/kgg-workload-sha256": hashlib.sha256(archive).hexdigest(),
        }
    )

    boot = vm.boot()

    assert boot.returncode == 0, boot.stderr
    assert [call for call in vm.calls("uv") if "sync" in call]
    notebook = vm.root / "opt/keras-gpu-gcp/app/kgg/agent/notebooks/walkthrough.ipynb"
    assert '"new": true' in notebook.read_text()
    assert (vm.root / "var/lib/keras-gpu-gcp/markers/python-env").read_text().strip() == (
        hashlib.sha256(archive).hexdigest()
    )


def test_archive_that_does_not_match_its_hash_fails_the_python_step(vm: FakeVm) -> None:
    vm.flag("driver-loaded")
    vm.cloud.objects[vm.archive_object] = b"tampered"

    boot = vm.boot()

    assert boot.returncode != 0
    error = vm.status()["error"]
    assert error["step"] == "python"
    assert (
        error["message"] == f"gs://{BUCKET}/{vm.archive_object} does not match kgg-workload-sha256"
    )
    assert not vm.handed_over()


def test_archive_with_a_link_or_a_climbing_name_is_refused(vm: FakeVm) -> None:
    buffer = io.BytesIO()
    import tarfile

    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("../../etc/cron.d/evil")
        info.size = 4
        archive.addfile(info, io.BytesIO(b"evil"))
    data = buffer.getvalue()
    vm.cloud.objects[vm.archive_object] = data
    vm.set_metadata({"instance/attributes/kgg-workload-sha256": hashlib.sha256(data).hexdigest()})
    vm.flag("driver-loaded")

    assert vm.boot().returncode != 0

    assert "not a plain file" in vm.status()["error"]["message"]
    assert not (vm.root / "etc/cron.d/evil").exists()
    assert not (vm.root / "opt/keras-gpu-gcp/etc/cron.d/evil").exists()


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
    assert status["error"]["message"] == ("uv sync failed after 3 attempts: error: stub uv failure")
    assert "stub uv failure" in status["error"]["log_tail"]
    assert status["error"]["hint"]
    assert len([call for call in vm.calls("uv") if "sync" in call]) == 3  # KGG_RETRY_ATTEMPTS


def test_flaky_network_call_succeeds_on_retry(vm: FakeVm) -> None:
    vm.flag("driver-loaded")
    vm.cloud.fail("kgg-bucket", times=2)
    vm.cloud.fail("alt=media", times=1)

    boot = vm.boot()

    assert boot.returncode == 0, boot.stderr
    assert len(vm.cloud.requested("kgg-bucket")) == 3
    assert vm.status()["steps"]["python"]["state"] == "done"
    assert "retrying" in boot.stderr


def test_network_that_stays_down_fails_preflight_after_bounded_retries(vm: FakeVm) -> None:
    vm.cloud.fail("kgg-workload-object")

    boot = vm.boot()

    assert boot.returncode != 0
    error = vm.status()["error"]
    assert error["step"] == "preflight"
    assert (
        error["message"]
        == f"127.0.0.1:{vm.cloud.port}: HTTP 503 Service Unavailable (after 3 attempts)"
    )
    assert len(vm.cloud.requested("kgg-workload-object")) == 3


def test_failed_download_reports_its_own_error(vm: FakeVm) -> None:
    vm.flag("driver-loaded")
    vm.cloud.fail("alt=media", status=403)

    boot = vm.boot()

    assert boot.returncode != 0
    error = vm.status()["error"]
    assert error["step"] == "python"
    assert error["message"] == (
        f"could not download gs://{BUCKET}/{vm.archive_object}: "
        f"127.0.0.1:{vm.cloud.port}: HTTP 403 Forbidden (after 1 attempt)"
    )
    assert "HTTP 403 Forbidden" in error["log_tail"]
    assert "service account" in error["hint"]


def test_unsupported_os_fails_preflight_naming_the_os(tmp_path: Path) -> None:
    centos = 'PRETTY_NAME="CentOS Stream 9"\nID=centos\nVERSION_ID="9"\n'
    with fake_vm(tmp_path, os_release=centos) as vm:
        boot = vm.boot()

        assert boot.returncode == 3
        error = vm.status()["error"]
        assert error["step"] == "preflight"
        assert error["message"].startswith("unsupported OS: CentOS Stream 9;")
        assert "debian-12" in error["hint"]
        assert vm.calls("apt-get") == []


def test_deeplearning_image_uses_its_own_driver(tmp_path: Path) -> None:
    with fake_vm(tmp_path, image="deeplearning") as vm:
        vm.flag("driver-loaded")

        boot = vm.boot()

        assert boot.returncode == 0, boot.stderr
        assert vm.calls("apt-get") == []
        assert vm.calls("reboot") == []


def test_deeplearning_image_without_a_driver_fails_with_a_hint(tmp_path: Path) -> None:
    with fake_vm(tmp_path, image="deeplearning") as vm:
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


def test_uv_download_with_a_wrong_hash_fails_the_python_step(vm: FakeVm) -> None:
    vm.flag("driver-loaded")
    (vm.root / "opt/keras-gpu-gcp/bin/uv").unlink()
    vm.cloud.files["uv.whl"] = b"not the pinned wheel"

    boot = vm.boot()

    assert boot.returncode != 0
    error = vm.status()["error"]
    assert error["step"] == "python"
    assert error["message"].startswith("could not download uv 0.13.9: ")
    assert "does not match its expected SHA-256" in error["message"]


def test_pinned_uv_wheel_is_unpacked_into_place(vm: FakeVm) -> None:
    """The helper's other half: a wheel that matches goes to /opt/keras-gpu-gcp/bin/uv."""
    uv = vm.root / "opt/keras-gpu-gcp/bin/uv"
    stub = uv.read_bytes()
    uv.unlink()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as wheel:
        wheel.writestr("uv-0.13.9.data/scripts/uv", stub)
    vm.cloud.files["uv.whl"] = buffer.getvalue()
    digest = hashlib.sha256(buffer.getvalue()).hexdigest()
    from kgg.startup.render import UV_WHEEL_SHA256

    pinned = f"readonly UV_WHEEL_SHA256={UV_WHEEL_SHA256}"
    vm.script.write_text(
        vm.script.read_text().replace(pinned, f"readonly UV_WHEEL_SHA256={digest}")
    )
    vm.flag("driver-loaded")

    boot = vm.boot()

    assert boot.returncode == 0, boot.stderr
    assert uv.read_bytes() == stub
    assert uv.stat().st_mode & 0o111


def test_loaded_nouveau_is_blacklisted_and_needs_a_reboot(vm: FakeVm) -> None:
    (vm.root / "sys/module/nouveau").mkdir(parents=True)
    vm.flag("apt-available", f"linux-modules-nvidia-580-server-{KERNEL}\n")

    boot = vm.boot()

    assert boot.returncode == 0, boot.stderr
    blacklist = vm.root / "etc/modprobe.d/blacklist-nouveau.conf"
    assert "blacklist nouveau" in blacklist.read_text()
    assert ["update-initramfs", "-u"] in vm.calls("update-initramfs")
    assert vm.calls("reboot") == [["reboot"]]


def test_debian_12_installs_the_dkms_driver_from_non_free_and_reboots(tmp_path: Path) -> None:
    with fake_vm(tmp_path, os_release=DEBIAN) as vm:
        sources = vm.root / "etc/apt/sources.list.d/debian.sources"
        sources.parent.mkdir(parents=True)
        sources.write_text("Types: deb\nURIs: https://deb.debian.org/debian\nComponents: main\n")

        boot = vm.boot()

        assert boot.returncode == 0, boot.stderr
        assert "Components: main contrib non-free non-free-firmware" in sources.read_text()
        installed = set(vm.apt_installed())
        assert {"nvidia-kernel-dkms", "linux-image-cloud-amd64", "linux-headers-cloud-amd64"} <= (
            installed
        )
        assert vm.calls("reboot") == [["reboot"]]
        assert vm.status()["steps"]["driver"]["detail"].startswith("rebooting: driver installed")


def test_debian_12_with_a_one_line_sources_list_gets_non_free(tmp_path: Path) -> None:
    with fake_vm(tmp_path, os_release=DEBIAN, image="debian-12") as vm:
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


def test_a_failing_rerun_keeps_what_earlier_boots_reported(vm: FakeVm) -> None:
    """A later failure names its step; the steps it did not reach keep their last state."""
    vm.flag("driver-loaded")
    assert vm.boot().returncode == 0
    # What the agent reported at that boot.
    vm.run_bootstrap(
        "status", "step.jupyter=done", "detail.jupyter=JupyterLab at https://x:8888",
        "notebook_url=https://x:8888", "training=done", "step.training=done",
    )  # fmt: skip
    before = vm.status()
    vm.set_metadata({"instance/attributes/kgg-workload-sha256": "0" * 64})  # object unchanged

    boot = vm.boot()

    assert boot.returncode != 0
    after = vm.status()
    assert after["phase"] == "failed"
    assert after["error"]["step"] == "python"
    assert after["steps"]["python"]["state"] == "failed"
    for step in ("jupyter", "training", "idle"):
        assert after["steps"][step] == before["steps"][step], step
    for field in ("notebook_url", "training"):
        assert after[field] == before[field], field


def test_unwritable_bucket_costs_the_boot_a_bounded_time(vm: FakeVm) -> None:
    """Status uploads that keep failing stop after their budget; the boot itself goes on."""
    vm.flag("driver-loaded")
    vm.cloud.fail("uploadType=media", delay=1.0)

    started = time.monotonic()
    boot = vm.run(env={"KGG_STATUS_UPLOAD_BUDGET_SECONDS": "3"})
    elapsed = time.monotonic() - started

    assert boot.returncode == 0, boot.stderr
    uploads = vm.cloud.requested("uploadType=media")
    # two tries per update until 3 s of failures are spent: at most 2 updates x 2 tries
    assert 2 <= len(uploads) <= 4
    assert elapsed < 20
    assert "no more from this boot" in boot.stderr
    local = vm.local_status()
    assert {name: local["steps"][name]["state"] for name in OWN_STEPS} == dict.fromkeys(
        OWN_STEPS, "done"
    )
    spent = float((vm.root / "var/lib/keras-gpu-gcp/status-upload-seconds").read_text())
    assert spent >= 3  # the agent goes on from here: no more uploads at this boot either


def test_image_python_in_the_locked_range_is_used(vm: FakeVm) -> None:
    vm.flag("driver-loaded")
    fake_python(vm, "3.11")

    assert vm.boot().returncode == 0

    env = vm.state.joinpath("uv-env").read_text()
    assert f"UV_PYTHON={vm.root}/usr/bin/python3\n" in env
    assert "UV_PYTHON_PREFERENCE=only-system\n" in env
    assert vm.status()["steps"]["python"]["detail"].endswith("with Python 3.11.9 (system)")


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


def test_idle_check_without_an_env_powers_off_an_old_vm(vm: FakeVm) -> None:
    """A first boot that failed before the env: the timer's check decides by uptime."""
    vm.fail("uv", "sync")
    vm.flag("driver-loaded")
    assert vm.boot().returncode != 0
    (vm.root / "proc").mkdir()
    (vm.root / "proc/uptime").write_text("3700.00 100.0\n")

    check = vm.run_bootstrap("idle-check")

    assert check.returncode == 0, check.stderr
    assert vm.flagged("shutdown")
    status = vm.status()
    assert status["phase"] == "idle"
    assert status["steps"]["idle"]["detail"] == "stopped: no environment, up 3700s"


def test_idle_check_without_an_env_keeps_a_young_vm_up(vm: FakeVm) -> None:
    vm.fail("uv", "sync")
    vm.flag("driver-loaded")
    assert vm.boot().returncode != 0
    (vm.root / "proc").mkdir()
    (vm.root / "proc/uptime").write_text("600.00 100.0\n")

    assert vm.run_bootstrap("idle-check").returncode == 0

    assert not vm.flagged("shutdown")


def test_idle_check_without_an_env_waits_for_the_startup_script(vm: FakeVm) -> None:
    vm.fail("uv", "sync")
    vm.flag("driver-loaded")
    assert vm.boot().returncode != 0
    (vm.root / "proc").mkdir()
    (vm.root / "proc/uptime").write_text("3700.00 100.0\n")
    vm.flag("activating-google-startup-scripts.service")

    assert vm.run_bootstrap("idle-check").returncode == 0

    assert not vm.flagged("shutdown")


def test_the_status_document_is_the_shared_model(vm: FakeVm) -> None:
    vm.flag("driver-loaded")
    assert vm.boot().returncode == 0
    from kgg.common.documents import StartupStatus

    uploaded = vm.status()
    assert StartupStatus.from_json(uploaded).to_json() == uploaded
    assert vm.cloud.requested(f"name={STATUS.replace('/', '%2F')}")
    assert PASSWORD_SECRET not in json.dumps(uploaded)


def fake_python(vm: FakeVm, version: str) -> None:
    """The image's /usr/bin/python3, answering the version query the script asks."""
    python = vm.root / "usr/bin/python3"
    python.parent.mkdir(parents=True, exist_ok=True)
    python.write_text(f"#!/bin/sh\necho {version}\n")
    python.chmod(0o755)


def test_the_drivers_user_space_is_held_against_unattended_upgrades(vm: FakeVm) -> None:
    assert vm.boot().returncode == 0

    assert vm.calls("apt-mark") == [
        ["apt-mark", "hold", "nvidia-headless-no-dkms-580-server", "nvidia-utils-580-server",
         "nvidia-compute-utils-580-server"],
    ]  # fmt: skip


def test_debian_holds_its_dkms_driver_packages(tmp_path: Path) -> None:
    with fake_vm(tmp_path, os_release=DEBIAN) as vm:
        assert vm.boot().returncode == 0

        assert vm.calls("apt-mark") == [
            ["apt-mark", "hold", "nvidia-kernel-dkms", "nvidia-smi", "libcuda1",
             "nvidia-persistenced"],
        ]  # fmt: skip


def test_a_kernel_upgrade_gets_the_module_for_the_new_kernel_without_a_reboot(vm: FakeVm) -> None:
    assert vm.boot().returncode == 0  # installs the driver with the flavour's kernel, reboots
    vm.reboot()
    assert vm.boot().returncode == 0 and vm.handed_over()
    new_kernel = "5.15.0-1099-gcp"  # unattended upgrades brought a newer kernel: rebooted into it
    vm.flag("kernel", new_kernel + "\n")
    for stale in ("driver-loaded", "modules-for-running-kernel", "driver-packages"):
        (vm.state / stale).unlink(missing_ok=True)
    vm.flag("apt-available", f"linux-modules-nvidia-580-server-{new_kernel}\n")
    vm.reboot()

    boot = vm.boot()

    assert boot.returncode == 0, boot.stderr
    assert f"linux-modules-nvidia-580-server-{new_kernel}" in vm.apt_installed()
    assert vm.calls("reboot") == []
    assert vm.status()["steps"]["driver"]["state"] == "done"
    assert vm.handed_over()


def test_idle_check_without_an_env_in_a_group_runs_the_stop_workflow_never_a_power_off(
    vm: FakeVm,
) -> None:
    """A group recreates a VM that powers off (a loop that keeps paying): the stop workflow the
    program declares resizes its group to 0, as the workflow's own account."""
    vm.fail("uv", "sync")
    vm.flag("driver-loaded")
    assert vm.boot().returncode != 0
    stack = vm.cloud.stack
    vm.set_metadata(
        {
            "instance/attributes/kgg-instance-group": stack.group,
            "instance/attributes/kgg-stop-workflow": stack.workflow.name,
        }
    )
    (vm.root / "proc").mkdir()
    (vm.root / "proc/uptime").write_text("3700.00 100.0\n")

    check = vm.run_bootstrap("idle-check")

    assert check.returncode == 0, check.stderr
    assert not vm.flagged("shutdown")
    assert vm.cloud.requested("/executions") == [
        f"POST /workflows/v1/{stack.workflow.name}/executions"
    ]
    assert vm.cloud.requested("/resize") == [f"POST /compute/v1/{stack.group_path}/resize?size=0"]
    assert vm.cloud.group_sizes[stack.group_path] == 0
    assert vm.status()["error"]["step"] == "python"  # the failed boot's, not a failed stop


def test_the_startup_log_reaches_the_bucket_at_each_step_end_before_the_env(vm: FakeVm) -> None:
    vm.flag("driver-loaded")
    vm.fail("uv", "sync")

    vm.boot()

    log = vm.cloud.objects["logs/startup.log"].decode()
    assert "step driver: done" in log
    assert "step python failed: uv sync failed after 3 attempts" in log


def test_a_failure_before_the_env_posts_to_the_webhook_from_bootstrap(vm: FakeVm) -> None:
    from tests.webhook_server import running_webhook

    secret = vm.cloud.stack.notify_secret
    with running_webhook() as webhook:
        vm.cloud.put_secret(secret, webhook.url + "\n")
        vm.set_metadata({"instance/attributes/kgg-notify-webhook-secret": secret})
        vm.flag("driver-loaded")
        vm.fail("uv", "sync")

        assert vm.boot().returncode != 0

    ((path, body),) = webhook.posts
    assert path == "/hooks/T000/B000/secret-token"
    assert body["text"] == (
        "keras-gpu-gcp: the startup script failed on kgg-dev-vm at step python: "
        "uv sync failed after 3 attempts: error: stub uv failure"
    )
    assert (body["event"], body["step"]) == ("startup-failed", "python")
    assert "secret-token" not in (vm.root / "var/lib/keras-gpu-gcp/startup.log").read_text()


def test_a_stack_without_a_webhook_boots_and_fails_without_posting(vm: FakeVm) -> None:
    vm.flag("driver-loaded")
    vm.fail("uv", "sync")
    assert vm.boot().returncode != 0
    assert vm.cloud.requested("secrets/") == []
