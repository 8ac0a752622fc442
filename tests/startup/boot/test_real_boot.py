"""The rendered startup script on a real Debian 12 system: booted with systemd as PID 1, real apt
(DKMS builds Debian's driver), real uv and the locked environment, a real JupyterLab and the
training job, against a fake metadata server and the GCS emulator. Only the GPU is faked.

The tests are the VM's life in order (one machine for the module): first boot and the driver
reboot, the boot that brings everything up, training once the data arrives, a no-op reboot,
failures, and idle shutdown. Each test needs the ones before it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from kgg.common.gcs_front import Front, credentials_file
from kgg.infra import specs
from kgg.infra.archive import WorkloadArchive, build_archive
from kgg.infra.password import jupyter_password_hash
from kgg.infra.settings import StackSettings
from kgg.infra.stack_config import PROJECT_ROOT, settings_for_stack
from kgg.startup.render import render_startup_script
from tests import iam
from tests.fake_cloud import FakeCloud
from tests.job.conftest import write_tiny_data
from tests.kernels import run_in_kernel, start_kernel, stop_kernel
from tests.startup.boot.cloud import free_port, gcs_emulator, read_json, storage_client
from tests.startup.boot.image import METADATA_ADDRESS, build_image
from tests.startup.boot.machine import EXIT_POWEROFF, EXIT_REBOOT, Machine, wait_for
from tests.startup.boot.phases import NOTES, phase

pytestmark = [pytest.mark.boot, pytest.mark.usefixtures("boot_prerequisites")]

BUCKET = "kgg-boot-test"
PASSWORD = "correct horse battery staple"
SALT = base64.b64encode(b"boot-suite-salt!").decode()
DATA_PATH = "data/plant-seedlings"
TRAINING_ARGS = [
    "--weights", "none", "--image-size", "32", "--batch-size", "4", "--head-epochs", "1",
    "--finetune-epochs", "1", "--no-progress",
]  # fmt: skip
IDLE_CHECK_SECONDS = 20  # the idle timer's period in the idle-shutdown test
KEEP_ENV = "KGG_BOOT_KEEP"  # =1: keep the machine's root after the suite, to read its journal
PROJECT = "boot-test-project"
# The program declared for this bucket and project (tests/iam.py): the doubles enforce its grants
# (the VM's token comes from the metadata server), and its names are the VM's.
STACK = iam.stack(BUCKET, project=PROJECT, suffix="1a2b3c", project_number="123456")
GROUP = STACK.group  # the VM's managed instance group (kgg/infra/component.py)
PASSWORD_SECRET = STACK.password_secret
STATE = "var/lib/keras-gpu-gcp"
GIB = 1024**3
API_TOKEN = "/etc/keras-gpu-gcp/jupyter/api-token"
TLS_ATTRIBUTE = "kgg/tls-sha256"  # kgg/common/contract.py, spelled out: the old code lacks it
LOG_SYNC = "kgg-log-sync.service"


@dataclass
class Vm:
    """The machine, its fake cloud, and what infra/ would have given it."""

    machine: Machine
    cloud: FakeCloud
    gcs_url: str
    storage: Any
    archive: WorkloadArchive
    port: int
    environment: dict[str, str] = field(default_factory=dict)
    tmp: Path = Path()
    front: Any = None

    def settings(self, **overrides: Any) -> StackSettings:
        return settings_for_stack(
            "dev",
            {
                "allowedSourceRanges": ["203.0.113.7/32"],
                "image": "debian-12",
                "notebookPort": self.port,
                "trainingArgs": TRAINING_ARGS,
                **overrides,
            },
        )

    def give_metadata(self, settings: StackSettings, idle_check_seconds: int = 300) -> None:
        """The instance metadata `pulumi up` sets, made by the project's own code."""
        attributes = specs.instance_metadata(
            settings,
            render_startup_script(settings, idle_check_seconds=idle_check_seconds),
            archive_sha256=self.archive.sha256,
            bucket=BUCKET,
            workload_object=self.archive.object_name,
            password_secret=PASSWORD_SECRET,
            group=GROUP,
            stop_workflow=STACK.workflow.name,
        )
        self.cloud.metadata.update(
            {f"instance/attributes/{key}": value for key, value in attributes.items()}
        )

    def attribute(self, key: str) -> str:
        return self.cloud.metadata[f"instance/attributes/{key}"]

    def status(self) -> dict[str, Any] | None:
        """status/startup.json as uploaded to the bucket."""
        return read_json(self.storage, BUCKET, "status/startup.json")

    def local_status(self) -> dict[str, Any]:
        """The VM's own copy (what it could not upload too)."""
        return json.loads((self.machine.root / STATE / "status.json").read_text())

    def startup_journal(self) -> str:
        """The startup script's last lines in the machine's journal (for failure messages)."""
        return self.machine.journal("--unit=google-startup-scripts.service", "--lines=60")


@pytest.fixture(scope="module")
def vm(boot_prerequisites: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vm]:
    tmp = tmp_path_factory.mktemp("boot")
    with phase("image: debootstrap Debian 12 (cached between runs)"):
        image = build_image()
    values = {
        "instance/name": "kgg-boot-test-vm",
        "instance/zone": "projects/123456/zones/us-central1-a",
        "project/project-id": PROJECT,
        # The notebook URL and the certificate's address: loopback, so the tests can check both.
        "instance/network-interfaces/0/access-configs/0/external-ip": "127.0.0.1",
    }
    # metadata.google.internal (the root's /etc/hosts) and Secret Manager, on port 80 as GCE's.
    with (
        FakeCloud(METADATA_ADDRESS, 80, metadata=values, stack=STACK) as cloud,
        gcs_emulator(BUCKET, tmp / "gcs.log") as emulator_url,
        Front(emulator_url, STACK.authority) as front,
    ):
        gcs_url = front.url
        owner = tmp / "laptop-credentials.json"
        owner.write_text(json.dumps(credentials_file(STACK.owner_token)))
        cloud.put_secret(PASSWORD_SECRET, jupyter_password_hash(PASSWORD, SALT))
        archive = build_archive()
        storage = storage_client(gcs_url, STACK.owner_token)
        storage.bucket(BUCKET).blob(archive.object_name).upload_from_string(archive.data)
        with phase("machine: copy of the image"):
            machine = Machine(image, tmp / "root", tmp / "console.log")
        test_vm = Vm(machine, cloud, gcs_url, storage, archive, free_port(), tmp=tmp, front=front)
        test_vm.environment = {
            # The fakes' endpoints; every unit the script writes inherits them.
            "KGG_GCS_API_URL": f"{gcs_url}/storage/v1",
            "KGG_GCS_UPLOAD_URL": f"{gcs_url}/upload/storage/v1",
            "STORAGE_EMULATOR_HOST": gcs_url,
            "KGG_SECRET_MANAGER_URL": cloud.environment()["KGG_SECRET_MANAGER_URL"],
            # The stop workflow's executions (it resizes the group, as its own account).
            "KGG_WORKFLOWS_URL": cloud.environment()["KGG_WORKFLOWS_URL"],
            # google-auth asks the metadata server's address whether it runs on GCE (GCE's is
            # 169.254.169.254); its name resolves through the root's /etc/hosts.
            "GCE_METADATA_IP": METADATA_ADDRESS,
            # No GPU here: TensorFlow sees none (nvidia-smi's stand-in shows the T4).
            "KGG_EXPECTED_GPUS": "0",
            "KGG_DATA_POLL_SECONDS": "2",
            # uv trusts its own roots, not the system's: give it the system's (proxy CA).
            "SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt",
        }
        machine.set_environment(test_vm.environment)
        test_vm.give_metadata(test_vm.settings())
        try:
            yield test_vm
        finally:
            machine.kill()
            if os.environ.get(KEEP_ENV) == "1":
                print(f"\nthe machine's root is kept in {machine.root} ({KEEP_ENV}=1)")
            else:
                shutil.rmtree(machine.root, ignore_errors=True)


def steps(status: dict[str, Any]) -> dict[str, str]:
    return {name: step["state"] for name, step in status["steps"].items()}


def login(vm: Vm, password: str) -> tuple[requests.Session, int]:
    """A browser's login to JupyterLab (TLS pinned to its certificate); the login's HTTP status."""
    url = f"https://127.0.0.1:{vm.port}"
    session = requests.Session()
    session.trust_env = False
    session.verify = str(vm.tmp / "jupyter.crt")  # the certificate names the external IP
    session.get(f"{url}/login", timeout=10)
    answer = session.post(
        f"{url}/login",
        data={"password": password, "_xsrf": session.cookies.get("_xsrf", "")},
        allow_redirects=False,
        timeout=30,
    )
    return session, answer.status_code


def read_bytes_of(vm: Vm, name: str) -> bytes | None:
    blob = vm.storage.bucket(BUCKET).blob(name)
    return blob.download_as_bytes() if blob.exists() else None


def ended_training(vm: Vm) -> dict[str, Any] | None:
    status = vm.status()
    return status if status and status["training"] in ("done", "failed") else None


def test_first_boot_builds_the_dkms_driver_for_the_cloud_kernel_and_reboots(vm: Vm) -> None:
    with phase("boot 1: Debian's driver with DKMS (apt, kernel, headers), then reboot"):
        vm.machine.boot()
        exit_status = vm.machine.wait_exit(timeout=1200)

    assert exit_status == EXIT_REBOOT, vm.startup_journal()
    status = vm.status()
    assert status is not None
    assert steps(status)["preflight"] == "done"
    assert status["steps"]["driver"]["state"] == "running"
    assert status["steps"]["driver"]["detail"].startswith("rebooting: driver installed")
    modules = sorted(
        vm.machine.root.glob("lib/modules/*-cloud-amd64/updates/dkms/nvidia-current.ko*")
    )
    assert modules, "DKMS built no nvidia module for the cloud kernel"
    sources = (vm.machine.root / "etc/apt/sources.list").read_text()
    assert "main contrib non-free non-free-firmware" in sources
    assert status["run_id"] == vm.attribute("kgg-run-id")
    held = subprocess.run(
        ["chroot", str(vm.machine.root), "apt-mark", "showhold"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert {"nvidia-kernel-dkms", "nvidia-smi", "libcuda1", "nvidia-persistenced"} <= set(held)


def test_next_boot_brings_every_step_up(vm: Vm) -> None:
    with phase("boot 2: Python env (uv, locked wheels), JupyterLab, training unit"):
        vm.machine.boot()
        run = vm.machine.wait_startup_run(timeout=900)

    assert run.exit_status == 0, json.dumps(vm.local_status(), indent=1)
    status = vm.status()
    assert status is not None
    assert steps(status) == dict.fromkeys(
        ("preflight", "driver", "python", "gpu-check", "jupyter", "training", "idle"), "done"
    )
    assert status["phase"] == "training"
    assert status["error"] is None
    assert status["gpus"] == ["Tesla T4"]
    assert status["steps"]["driver"]["detail"] == "driver present: Tesla T4"
    # Debian 12's own python3 satisfies the pin: nothing is downloaded from outside PyPI.
    assert "with Python 3.11." in status["steps"]["python"]["detail"]
    assert status["steps"]["python"]["detail"].endswith("(system)")
    # The training unit reports this itself, moments after the boot started it.
    waiting = f"waiting for data at gs://{BUCKET}/{DATA_PATH}/"
    wait_for(lambda: (vm.status() or {}).get("training") == waiting or None, 120, waiting)
    # The host keys sshd serves, published for the laptop's ssh entry to pin.
    public = (vm.machine.root / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()
    assert vm.cloud.guest_attributes[f"hostkeys/{public[0]}"] == public[1]


def test_jupyterlab_serves_tls_only_and_only_to_the_password(vm: Vm) -> None:
    status = vm.status()
    assert status is not None
    url = f"https://127.0.0.1:{vm.port}"
    assert status["notebook_url"] == url
    pem = ssl.get_server_certificate(("127.0.0.1", vm.port))
    fingerprint = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest().upper()
    assert status["tls_sha256"] == ":".join(
        fingerprint[i : i + 2] for i in range(0, len(fingerprint), 2)
    )
    (vm.tmp / "jupyter.crt").write_text(pem)
    # What `status` vouches for: the VM's own guest attribute, not the bucket's document.
    assert vm.cloud.guest_attributes[TLS_ATTRIBUTE] == status["tls_sha256"]

    anonymous, _ = login(vm, "not the password")
    assert anonymous.get(f"{url}/api/status", timeout=10).status_code == 403
    _, wrong = login(vm, "not the password")
    assert wrong == 401
    session, right = login(vm, PASSWORD)
    assert right == 302
    assert session.get(f"{url}/api/status", timeout=10).status_code == 200
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://127.0.0.1:{vm.port}/api/status", timeout=10)
    processes = vm.machine.exec("ps", "-ww", "-o", "pid=,args=", "-u", "jupyter").stdout
    assert "/opt/keras-gpu-gcp/venv/bin/jupyter-lab --config=" in processes
    # Kernels inherit the server's environment: the API token is not in it.
    server = next(line.split()[0] for line in processes.splitlines() if "jupyter-lab" in line)
    environment = vm.machine.exec("cat", f"/proc/{server}/environ").stdout
    assert "JUPYTER_TOKEN" not in environment


def sha256_colons(pem: str) -> str:
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def pin_published_certificate(vm: Vm) -> None:
    """Trusts JupyterLab's certificate as a user does: only if the VM published its fingerprint
    (the guest attribute `status` reads)."""
    pem = ssl.get_server_certificate(("127.0.0.1", vm.port))
    if sha256_colons(pem) == vm.cloud.guest_attributes.get(TLS_ATTRIBUTE):
        (vm.tmp / "jupyter.crt").write_text(pem)


# What a notebook user leaves behind to outlast a password change: Python that the server runs
# (it accepts a backdoor password), a kernelspec, and an IPython startup file kernels run.
BACKDOOR = "the notebook user's backdoor"
PLANTED = {
    ".jupyter/jupyter_config.py": (
        "from jupyter_server.auth.identity import PasswordIdentityProvider as P\n"
        "_check = P.passwd_check\n"
        f"P.passwd_check = lambda self, typed: typed == {BACKDOOR!r} or _check(self, typed)\n"
    ),
    ".local/share/jupyter/kernels/planted/kernel.json": (
        '{"argv": ["sh", "-c", "touch ~/planted-kernel-ran"], "display_name": "planted"}'
    ),
    ".ipython/profile_default/startup/00-planted.py": (
        "import pathlib; pathlib.Path.home().joinpath('planted-startup-ran').touch()\n"
    ),
}


def plant(vm: Vm) -> None:
    for relative, text in PLANTED.items():
        path = f"/home/jupyter/{relative}"
        made = vm.machine.exec(
            "runuser", "-u", "jupyter", "--", "sh", "-c",
            f'mkdir -p "$(dirname {path})" && cat > {path} <<\'EOF\'\n{text}\nEOF',
        )  # fmt: skip
        assert made.returncode == 0, made.stderr


def test_a_new_password_replaces_the_old_one_and_everything_its_holder_left(vm: Vm) -> None:
    """`pulumi config set --secret jupyterPassword` + `pulumi up` adds a secret version; the
    VM's refresh timer (every 5 minutes; started here at once) restarts JupyterLab with it, a new
    TLS key and a new API token, and nothing the old password's holder planted works."""
    url = f"https://127.0.0.1:{vm.port}"
    plant(vm)
    token = vm.machine.exec("runuser", "-u", "jupyter", "--", "cat", API_TOKEN).stdout.strip()
    old_session, status = login(vm, PASSWORD)
    assert status == 302 and len(token) == 64
    old_fingerprint = (vm.status() or {})["tls_sha256"]
    new_password = "another long passphrase"
    vm.cloud.put_secret(PASSWORD_SECRET, jupyter_password_hash(new_password, SALT))

    refresh = vm.machine.exec("systemctl", "start", "kgg-password-refresh.service")
    assert refresh.returncode == 0, refresh.stderr

    def new_login() -> bool | None:
        try:
            return login(vm, new_password)[1] == 302 or None
        except requests.exceptions.SSLError:  # the new key: trusted as the VM published it
            pin_published_certificate(vm)
            return None

    wait_for(new_login, timeout=180, what="the new login")
    assert login(vm, PASSWORD)[1] == 401
    assert login(vm, BACKDOOR)[1] == 401
    assert login(vm, token)[1] == 401  # the server takes its API token as a password too
    assert old_session.get(f"{url}/api/status", timeout=10).status_code == 403
    session, _ = login(vm, new_password)
    kernelspecs = session.get(f"{url}/api/kernelspecs", timeout=10).json()["kernelspecs"]
    assert "python3" in kernelspecs and "planted" not in kernelspecs
    kernel = start_kernel(session, url)
    try:  # a cell, as the new password's holder runs one: IPython's startup files ran before it
        code = "import os; print(os.environ['IPYTHONDIR'])"
        printed = run_in_kernel(session, url, str(vm.tmp / "jupyter.crt"), kernel, code)
    finally:
        stop_kernel(session, url, kernel)
    assert printed == "/run/kgg-jupyter/ipython\n"
    ran = vm.machine.exec("ls", "/home/jupyter").stdout.split()
    assert "planted-startup-ran" not in ran and "planted-kernel-ran" not in ran
    new_fingerprint = sha256_colons((vm.tmp / "jupyter.crt").read_text())
    assert new_fingerprint != old_fingerprint
    assert (vm.status() or {})["tls_sha256"] == new_fingerprint
    assert vm.cloud.guest_attributes[TLS_ATTRIBUTE] == new_fingerprint
    assert (
        "kgg-password-refresh.timer"
        in vm.machine.exec("systemctl", "list-timers", "--all", "--no-pager").stdout
    )


def test_training_runs_once_the_data_is_uploaded_and_writes_its_results(vm: Vm) -> None:
    data = write_tiny_data(vm.tmp / "data", per_class=8)
    upload = subprocess.run(
        [sys.executable, "-m", "kgg", "upload", str(data), "--bucket", BUCKET,
         "--prefix", DATA_PATH, "--quiet"],
        cwd=PROJECT_ROOT,
        env={**os.environ, "STORAGE_EMULATOR_HOST": vm.gcs_url,
             "GOOGLE_APPLICATION_CREDENTIALS": str(vm.tmp / "laptop-credentials.json")},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert upload.returncode == 0, upload.stderr

    with phase("training: the job on the uploaded data (CPU, 32 px)"):
        final = wait_for(
            lambda: ended_training(vm), timeout=900, what="the end of the training run", every=3
        )

    assert final["training"] == "done", final.get("error")
    assert final["phase"] == "done"
    run = f"runs/{vm.attribute('kgg-run-id')}/"
    written = {blob.name.removeprefix(run) for blob in vm.storage.list_blobs(BUCKET, prefix=run)}
    assert {"model.keras", "metrics.json", "history.csv", "submission.csv"} <= written
    metrics = read_json(vm.storage, BUCKET, f"{run}metrics.json")
    assert metrics is not None
    assert len(metrics["class_names"]) == 3
    assert (
        vm.machine.root / STATE / f"markers/training-done-{vm.attribute('kgg-run-id')}"
    ).exists()

    # Issue 13 on a real boot: the logs, the TensorBoard events and the cost reach the bucket
    # through the real units (kgg-log-sync, the training service), readable once the VM is gone.
    train_log = read_bytes_of(vm, f"{run}train.log") or b""
    assert b"done: " in train_log  # the job's result line, uploaded when the job ended
    startup_log = read_bytes_of(vm, "logs/startup.log") or b""
    assert b"step jupyter: done" in startup_log and b"step training: done" in startup_log
    assert any(name.startswith("tensorboard/head/") for name in written)
    ledger = read_json(vm.storage, BUCKET, "status/cost.json")
    assert ledger is not None
    runs = ledger["runs"]
    assert runs[vm.attribute("kgg-run-id")]["seconds"] > 0
    assert all(boot["hourly_usd"] > 0 for boot in ledger["boots"].values())


SANDBOX = ("ProtectSystem", "ProtectHome", "PrivateTmp", "NoNewPrivileges")
ROOT_SERVICES = {  # each one's ProtectHome=
    "kgg-log-sync.service": "yes",
    "kgg-password-refresh.service": "yes",
    "kgg-training.service": "tmpfs",
    "kgg-idle-check.service": "tmpfs",
}


def test_the_root_services_run_sandboxed_and_still_do_their_work(vm: Vm) -> None:
    """Their work is what the tests around this one check (the logs and the ledger reached the
    bucket, a new password took effect, the run trained; the idle stop comes last); here, that
    systemd ran them in their sandbox, seen from inside the running log sync too."""
    for unit, home in ROOT_SERVICES.items():
        shown = vm.machine.exec("systemctl", "show", *(f"--property={p}" for p in SANDBOX), unit)
        values = dict(line.split("=", 1) for line in shown.stdout.splitlines())
        assert values == {
            "ProtectSystem": "strict", "ProtectHome": home, "PrivateTmp": "yes",
            "NoNewPrivileges": "yes",
        }, unit  # fmt: skip
    pid = vm.machine.exec("systemctl", "show", "--property=MainPID", "--value", LOG_SYNC)
    probe = (
        "touch /usr/kgg-probe 2>&1; touch /etc/kgg-probe 2>&1; ls -A /home; "
        f"touch /{STATE}/kgg-probe && echo state-writable && rm /{STATE}/kgg-probe"
    )
    inside = vm.machine.exec(
        "nsenter", f"--target={pid.stdout.strip()}", "--mount", "--", "sh", "-c", probe
    )
    assert inside.stdout.splitlines() == [
        "touch: cannot touch '/usr/kgg-probe': Read-only file system",
        "touch: cannot touch '/etc/kgg-probe': Read-only file system",
        "state-writable",
    ], inside.stderr
    assert vm.machine.exec("systemctl", "is-active", LOG_SYNC).stdout.strip() == "active"


def test_a_later_boot_reinstalls_nothing_and_is_quick(vm: Vm) -> None:
    # A notebook user (from a Jupyter terminal) swaps the workspace for a link to root's code.
    swap = vm.machine.exec(
        "runuser", "-u", "jupyter", "--", "sh", "-c",
        "mv /home/jupyter/work /home/jupyter/mine && ln -s /opt/keras-gpu-gcp/app/kgg "
        "/home/jupyter/work",
    )  # fmt: skip
    assert swap.returncode == 0, swap.stderr

    with phase("boot 3: nothing to do"):
        vm.machine.reboot()
        run = vm.machine.wait_startup_run(timeout=300)

    assert run.exit_status == 0, json.dumps(vm.local_status(), indent=1)
    assert run.seconds < 30
    code = "/opt/keras-gpu-gcp/app/kgg"
    owners = vm.machine.exec(
        "stat", "-c", "%U %F", code, f"{code}/agent", "/home/jupyter/work"
    ).stdout.splitlines()  # fmt: skip
    assert owners == ["root directory", "root directory", "jupyter directory"]
    status = vm.status()
    assert status is not None
    assert status["steps"]["python"]["detail"].startswith("environment matches archive")
    assert status["steps"]["training"]["detail"].endswith("finished at an earlier boot")
    assert status["training"] == "done"
    # uv's cache shares the venv's files: the wheels take their room once.
    venv = vm.machine.disk_usage_bytes("opt/keras-gpu-gcp/venv")
    both = vm.machine.disk_usage_bytes("opt/keras-gpu-gcp/venv", "var/cache/keras-gpu-gcp/uv")
    assert both < venv * 1.05
    total = vm.machine.disk_usage_bytes()
    NOTES.append(
        f"disk after boot: root {total / GIB:.2f} GiB, venv {venv / GIB:.2f} GiB, "
        f"uv cache adds {(both - venv) / GIB:.2f} GiB; no-op boot {run.seconds} s"
    )


def test_a_notebook_user_racing_a_rerun_of_the_script_gets_nothing_of_roots(vm: Vm) -> None:
    """The README's troubleshooting rerun while a notebook-user process swaps ~/work for a link
    to a folder systemd runs as root (its generators) the moment the step has made it: every
    write of the step lands only where that user may write anyway."""
    generators = "/usr/lib/systemd/system-generators"
    before = vm.machine.exec("ls", "-A", generators).stdout
    # The racer reacts within a millisecond (no process per check): the step's window between
    # making the folder and writing into it is tens of milliseconds.
    racer = (
        "import os, time\n"
        "while not os.path.exists('stop-race'):\n"
        "    if os.path.isdir('work') and not os.path.islink('work'):\n"
        "        try:\n"
        "            os.rename('work', f'work.raced-{time.monotonic_ns()}')\n"
        f"            os.symlink({generators!r}, 'work')\n"
        "        except OSError:\n"
        "            pass\n"
        "    else:\n"
        "        time.sleep(0.0005)\n"
        "open('race-stopped', 'w').close()\n"
    )
    race = (
        "cd /home/jupyter && mv work work.saved && rm -f work.saved/walkthrough.ipynb && "
        f'mkdir work && nohup python3 -c "{racer}" >/dev/null 2>&1 </dev/null &'
    )
    started = vm.machine.exec("runuser", "-u", "jupyter", "--", "sh", "-c", race)
    assert started.returncode == 0, started.stderr
    wait_for(
        lambda: vm.machine.exec("test", "-L", "/home/jupyter/work").returncode == 0 or None,
        timeout=30,
        what="the racing link",
    )

    runs = len(vm.machine.startup_runs())
    with phase("rerun of the startup script with a notebook user racing it"):
        # What `sudo google_metadata_script_runner startup` does, in the unit's environment.
        rerun = vm.machine.exec("systemctl", "start", "google-startup-scripts.service")

    stop = "touch stop-race; while [ ! -e race-stopped ]; do sleep 0.1; done"
    vm.machine.exec("runuser", "-u", "jupyter", "--", "sh", "-c", f"cd /home/jupyter && {stop}")
    after = vm.machine.exec("ls", "-A", generators).stdout
    owned = vm.machine.exec("find", "/usr", "/opt", "/etc", "/var/lib", "-xdev", "-user", "jupyter")
    tidy = (  # first, so that a failure here leaves the next tests a workspace
        "cd /home/jupyter && rm -rf work work.raced-* work.moved-* stop-race race-stopped && "
        "mv work.saved work"
    )
    assert vm.machine.exec("runuser", "-u", "jupyter", "--", "sh", "-c", tidy).returncode == 0
    assert rerun.returncode == 0, rerun.stderr
    assert [run.exit_status for run in vm.machine.startup_runs()[runs:]] == [0], (
        vm.startup_journal()
    )
    assert after == before
    assert owned.stdout.split() == ["/etc/keras-gpu-gcp/jupyter/tls/jupyter.key"]


def test_a_vm_recreated_in_another_zone_gets_its_workspace_and_finished_run_back(vm: Vm) -> None:
    """The group replaced the VM (preemption, a stockout elsewhere): a new disk holds no
    notebooks and no markers; the bucket holds both."""
    notebook = "/home/jupyter/work/experiment.ipynb"
    made = vm.machine.exec(
        "runuser", "-u", "jupyter", "--", "sh", "-c",
        f"echo '{{\"cells\": [\"mine\"]}}' > {notebook}",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    synced = vm.machine.exec("systemctl", "start", "kgg-workspace-sync.service")  # its timer: 60 s
    assert synced.returncode == 0, synced.stderr
    assert read_json(vm.storage, BUCKET, "workspace/experiment.ipynb") == {"cells": ["mine"]}
    vm.machine.exec("systemctl", "poweroff")
    assert vm.machine.wait_exit(timeout=120) == EXIT_POWEROFF
    root = vm.machine.root
    shutil.rmtree(root / "home/jupyter/work")
    for marker in (root / STATE / "markers").glob("training-done-*"):
        marker.unlink()
    vm.cloud.metadata["instance/zone"] = "projects/123456/zones/us-central1-f"
    vm.cloud.metadata["instance/name"] = "kgg-dev-1a2b3c-x7k2"

    with phase("boot 4: the VM recreated in another zone"):
        vm.machine.boot()
        run = vm.machine.wait_startup_run(timeout=300)
        done = root / STATE / f"markers/training-done-{vm.attribute('kgg-run-id')}"
        wait_for(lambda: done.exists() or None, timeout=300, what="the run found done again")

    assert run.exit_status == 0, json.dumps(vm.local_status(), indent=1)
    status = vm.status()
    assert status is not None
    assert (status["zone"], status["instance"]) == ("us-central1-f", "kgg-dev-1a2b3c-x7k2")
    assert "restored from gs://" in status["steps"]["jupyter"]["detail"]
    assert (root / notebook.lstrip("/")).read_text() == '{"cells": ["mine"]}\n'
    owner = vm.machine.exec("stat", "-c", "%U", notebook).stdout.strip()
    assert owner == "jupyter"
    latest = vm.status()
    assert latest is not None
    assert latest["training"] == "done"  # the job found its finished run in the bucket


def test_an_archive_that_does_not_match_its_hash_fails_the_python_step(vm: Vm) -> None:
    before = vm.status()
    assert before is not None
    vm.cloud.metadata["instance/attributes/kgg-workload-sha256"] = "0" * 64

    with phase("boot 5: wrong archive hash"):
        vm.machine.reboot()
        run = vm.machine.wait_startup_run(timeout=300)

    assert run.exit_status != 0
    status = vm.status()
    assert status is not None
    assert status["phase"] == "failed"
    assert status["error"]["step"] == "python"
    assert "does not match kgg-workload-sha256" in status["error"]["message"]
    # What the failed boot did not re-run keeps its last report.
    for step in ("jupyter", "training", "idle"):
        assert status["steps"][step] == before["steps"][step], step
    assert status["training"] == "done"


def test_unreachable_gcs_names_the_step_and_its_own_error(vm: Vm) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    vm.machine.set_environment(
        vm.environment
        | {
            "KGG_GCS_API_URL": f"{closed}/storage/v1",
            "KGG_GCS_UPLOAD_URL": f"{closed}/upload/storage/v1",
        }
    )

    with phase("boot 6: GCS unreachable"):
        vm.machine.reboot()
        run = vm.machine.wait_startup_run(timeout=600)

    assert run.exit_status != 0
    # Five download tries (30 s of backoff) and at most 60 s of status uploads, not minutes each.
    assert run.seconds < 150
    error = vm.local_status()["error"]
    assert error["step"] == "python"
    assert error["message"].startswith(f"could not download gs://{BUCKET}/")
    assert "Connection refused (after 5 attempts)" in error["message"]
    assert "Connection refused" in error["log_tail"]
    vm.machine.set_environment(vm.environment)
    vm.cloud.metadata["instance/attributes/kgg-workload-sha256"] = vm.archive.sha256


def test_idle_vm_asks_its_group_to_delete_it_while_jupyterlab_runs(vm: Vm) -> None:
    vm.give_metadata(vm.settings(idleShutdownMinutes=1), idle_check_seconds=IDLE_CHECK_SECONDS)
    vm.machine.reboot()
    run = vm.machine.wait_startup_run(timeout=300)
    up_since = time.monotonic()
    assert run.exit_status == 0, json.dumps(vm.local_status(), indent=1)
    assert vm.machine.running()
    status = vm.status()
    assert status is not None
    assert status["steps"]["idle"]["detail"] == "stops after 1 idle minutes"
    answer = requests.get(
        f"https://127.0.0.1:{vm.port}/api/status", verify=str(vm.tmp / "jupyter.crt"), timeout=10
    )
    assert answer.status_code == 403  # up, and the test's request is no activity (no login)

    late = vm.machine.exec(
        "runuser", "-u", "jupyter", "--", "sh", "-c", "echo late > /home/jupyter/work/late.txt"
    )  # fmt: skip
    assert late.returncode == 0, late.stderr
    resize = (
        f"POST /compute/v1/projects/{PROJECT}/regions/us-central1/instanceGroupManagers/{GROUP}"
        "/resize?size=0"
    )

    with phase("idle stop: 1 idle minute, checked every 20 s"):
        wait_for(
            lambda: vm.cloud.requested("/resize") or None,
            timeout=60 + 3 * IDLE_CHECK_SECONDS + 60,
            what="the group resize",
        )
        waited = time.monotonic() - up_since

    # The idle window, then at most three timer periods; the VM never powered itself off (its
    # group would have made it again): its stop workflow asked the group to delete it, as the
    # workflow's own account (the VM's holds no Compute Engine permission).
    assert waited <= 60 + 3 * IDLE_CHECK_SECONDS
    assert vm.cloud.requested("/resize") == [resize]
    assert vm.cloud.group_sizes[STACK.group_path] == 0
    stops = [
        e for e in vm.cloud.executions.values() if json.loads(e["argument"]) == {"check": False}
    ]
    assert [e["state"] for e in stops] == ["SUCCEEDED"]
    # Every boot checked its stop path first, without stopping.
    checks = [
        e for e in vm.cloud.executions.values() if json.loads(e["argument"]) == {"check": True}
    ]
    assert checks and all(e["state"] == "SUCCEEDED" for e in checks)
    # The VM's side ran under the VM's identity and its grants were enough: the only refusals
    # are the bucket metadata its reads of absent objects ask for (and take as "it exists").
    assert {refusal.split()[1] for refusal in vm.front.refusals} <= {"storage.buckets.get"}
    assert vm.machine.running()
    status = vm.status()
    assert status is not None
    assert status["phase"] == "idle"
    assert status["steps"]["idle"]["detail"].startswith(
        "stopped: no training and no notebook activity"
    )
    assert status["error"] is None
    assert read_bytes_of(vm, "workspace/late.txt") == b"late\n"  # the last sync before the stop
    # What the group does next: it deletes the VM, whose shutdown runs the final sync again.
    vm.machine.exec("systemctl", "poweroff")
    assert vm.machine.wait_exit(timeout=120) == EXIT_POWEROFF
