"""The startup script's helper before the VM has a Python environment, run by the image's own
python3 (stdlib only, Python 3.10+): what must run before the env exists (preflight, downloads,
the code archive, uv, Debian's sources, the idle check without an env). Its cloud calls, retries
and log lines are kgg/common/vm_runtime.py's, the agent's too. The rendered script carries this
file with kgg/common/vm_runtime.py, documents.py and contract.py and writes them to
/opt/keras-gpu-gcp/bootstrap/ at every boot. `bootstrap.py` alone lists its commands (COMMANDS).
A Vertex AI job's container runs it too, from the extracted code archive (`vertex`): the same uv
and the same locked env as the VM's, then the job.

A failure prints one line naming what failed and why (and a line "hint: ..." where there is
one) to stderr and to $KGG_LAST_ERROR: the script puts them in the status document.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from kgg.common.contract import (
    APP_DIR,
    BUCKET_KEY,
    CLI_NAME,
    CONF_DIR,
    GROUP_NAME_KEY,
    IDLE_TIMER,
    MANAGED_PYTHON_ENV,
    NOTIFY_SECRET_KEY,
    PASSWORD_SECRET_KEY,
    PYTHON_MAX_ENV,
    PYTHON_MIN_ENV,
    RUN_ID_KEY,
    STARTUP_LOG_OBJECT,
    STATE_DIR,
    STATUS_OBJECT,
    STOP_WORKFLOW_KEY,
    TRAIN_LOG_FILE,
    UV_VERSION_ENV,
    UV_WHEEL_SHA256_ENV,
    UV_WHEEL_URL_ENV,
    VENV_DIR,
    VERTEX_FUSE_ROOT,
    VERTEX_MODEL_DIR_ENV,
    WORKLOAD_OBJECT_KEY,
    WORKLOAD_SHA256_KEY,
    ContractError,
    check_run_id,
    check_secret_name,
    vertex_run_folder,
)
from kgg.common.documents import ChangeError, update_file
from kgg.common.vm_runtime import (
    ATTRIBUTES,
    UPLOAD_TRIES,
    CloudError,
    Endpoints,
    Metadata,
    UploadBudget,
    configure_logging,
    log,
    post_webhook,
    quote,
    read_secret,
    request,
    start_stop_workflow,
    upload_object,
    with_retries,
)

EXIT_FAILED = 1
EXIT_USAGE = 2  # an unknown command or the wrong arguments
EXIT_UNSUPPORTED_OS = 3  # named, so the serial console says what kind of failure it was
SUPPORTED_OS = {("ubuntu", "22.04"), ("ubuntu", "24.04"), ("debian", "12")}
SHA256 = re.compile(r"[0-9a-f]{64}")
DEBIAN_COMPONENTS = ("main", "contrib", "non-free", "non-free-firmware")
# Debian's sources in both formats: deb822 (GCE's images) and the one-line sources.list.
DEBIAN_SOURCES = ("etc/apt/sources.list.d/debian.sources", "etc/apt/sources.list")


class Failure(Exception):
    """What failed, in one line for the status document, with what to try and an exit code."""

    def __init__(self, message: str, hint: str = "", code: int = 1) -> None:
        super().__init__(message)
        self.hint = hint
        self.code = code


class HashMismatch(Failure):
    """A download is not what its pinned hash says."""


ROOT = Path(os.environ.get("KGG_ROOT") or "/")
STATE = ROOT / STATE_DIR.lstrip("/")
SETTINGS = ROOT / CONF_DIR.lstrip("/") / "settings.json"
VENV_PYTHON = ROOT / VENV_DIR.lstrip("/") / "bin/python"
APP = ROOT / APP_DIR.lstrip("/")
ENDPOINTS = Endpoints.from_environment()
METADATA = Metadata(ENDPOINTS.metadata)


def token() -> str:
    return METADATA.token()


def fetch(url: str, dest: Path, sha256: str, headers: dict[str, str] | None = None) -> None:
    """Downloads `url` to `dest`; a body that does not hash to `sha256` is refused."""
    body = request(url, headers=headers, timeout=600)
    if hashlib.sha256(body).hexdigest() != sha256:
        raise HashMismatch(f"{url} does not match its expected SHA-256 {sha256[:16]}...")
    dest.write_bytes(body)


def install_code(bucket: str, name: str, sha256: str, target: Path) -> None:
    """The code archive, checked against its hash, extracted root-owned (no links, nothing
    outside the folder) into `target`, which it replaces whole."""
    url = f"{ENDPOINTS.gcs_api}/b/{bucket}/o/{quote(name)}?alt=media"
    archive = target.with_name(f"{target.name}.tar.gz")
    try:
        fetch(url, archive, sha256, {"Authorization": f"Bearer {token()}"})
    except HashMismatch as error:
        raise Failure(f"gs://{bucket}/{name} does not match kgg-workload-sha256") from error
    except CloudError as error:
        raise Failure(f"could not download gs://{bucket}/{name}: {error}") from error
    new = target.with_name(f"{target.name}.new")
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            parts = Path(member.name).parts
            if not member.isreg() or member.name.startswith("/") or ".." in parts:
                raise Failure(f"gs://{bucket}/{name} holds {member.name!r}, not a plain file")
            path = new.joinpath(*parts)
            path.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            assert source is not None
            with source, path.open("wb") as out:
                shutil.copyfileobj(source, out)
            path.chmod(0o644)
    archive.unlink()
    shutil.rmtree(target, ignore_errors=True)
    new.rename(target)


def python_for_uv(settings: dict, system: str = "") -> str:
    """`PYTHON PREFERENCE` for uv: every locked wheel (TensorFlow's above all) exists for CPython
    python_min..python_max; the image's python3 (`system`) is used when in that range (Debian 12:
    3.11), else uv downloads managed_python (Ubuntu 22.04 ships 3.10)."""
    system = system or str(ROOT / "usr/bin/python3")
    low, high, managed = (settings[k] for k in ("python_min", "python_max", "managed_python"))
    try:
        version = subprocess.run(
            [system, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        version = ""

    def minor(text: str) -> int:
        return int(text.split(".")[1]) if text.startswith("3.") else -1

    if minor(low) <= minor(version) <= minor(high):
        return f"{system} only-system"
    return f"{managed} only-managed"


def wait_for(seconds: float, command: list[str], every: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while subprocess.run(command, capture_output=True, check=False).returncode != 0:
        if time.monotonic() >= deadline:
            raise Failure(f"{' '.join(command)} did not succeed within {seconds:.0f}s")
        time.sleep(every)


def _quick_upload(bucket: str, name: str, data: bytes, content_type: str) -> Callable[[], None]:
    """One object's upload with the status document's quick tries (the budget bounds them)."""

    def upload() -> None:
        upload_object(ENDPOINTS, METADATA, bucket, name, data, content_type,
                      attempts=UPLOAD_TRIES, base_seconds=0)  # fmt: skip

    return upload


def status(changes: list[str], bucket: str) -> None:
    """Updates the local document and uploads it, unless failed uploads have used up this
    boot's budget (kept in a file the agent's boot shares)."""
    path = STATE / "status.json"
    budget = UploadBudget(STATE / "status-upload-seconds")

    def upload(data: bytes) -> None:
        if bucket:
            put = _quick_upload(bucket, STATUS_OBJECT, data, "application/json")
            budget.upload("the status document", put, local=path)

    update_file(path, changes, upload)
    if "phase=failed" in changes:
        notify_startup_failure(changes)
    if any(re.fullmatch(r"step\.[a-z-]+=(done|skipped|failed)", change) for change in changes):
        upload_log(bucket, budget)


def upload_log(bucket: str, budget: UploadBudget) -> None:
    """The startup log to logs/startup.log at a step's end (the agent's log sync takes over
    once the env exists); within the same budget as the status uploads."""
    log_file = STATE / "startup.log"
    if bucket and log_file.is_file():
        budget.upload("the startup log", lambda: _quick_upload(
            bucket, STARTUP_LOG_OBJECT, log_file.read_bytes(), "text/plain")())  # fmt: skip


def notify_startup_failure(changes: list[str]) -> None:
    """Before the env: the webhook (if the stack has one) hears that the startup script failed.
    A notification that cannot be sent is logged; it never changes the script's outcome."""
    secret = METADATA.optional(ATTRIBUTES + NOTIFY_SECRET_KEY, attempts=2)
    if not secret:
        return  # no notifyWebhook on this stack
    fields = dict(change.partition("=")[::2] for change in changes)
    step, message = fields.get("error.step", "?"), fields.get("error.message", "")
    try:
        url = read_secret(ENDPOINTS, METADATA, secret, "the webhook URL")
        name = METADATA.get("instance/name", attempts=1)
        text = f"keras-gpu-gcp: the startup script failed on {name} at step {step}: {message}"
        post_webhook(url, text, {"event": "startup-failed", "instance": name, "step": step,
                                 "message": message})  # fmt: skip
    except CloudError as error:
        log.warning("could not send the failure notification (continuing): %s", error)


def os_release(root: Path) -> dict[str, str]:
    fields = {}
    for line in (root / "etc/os-release").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key] = " ".join(shlex.split(value)) if value else ""
    return fields


def write_env(values: dict[str, str]) -> None:
    """`boot.env`, which the script sources: shell-quoted, so no value can run as code."""
    text = "".join(f"{key}={shlex.quote(value)}\n" for key, value in values.items())
    (STATE / "boot.env").write_text(text)


def preflight(settings: dict) -> str:
    """The metadata the boot needs, checked, in `boot.env` for the script to source; the OS
    checked; the idle timer on or off. Returns the step's detail."""
    bucket = METADATA.attribute(BUCKET_KEY)
    # The bucket first: with it known, even an unsupported OS shows up in the status document.
    write_env({"BUCKET": bucket})
    try:
        run_id = check_run_id(METADATA.attribute(RUN_ID_KEY))
    except ContractError as error:
        raise Failure(str(error), "run pulumi up again") from error
    values = {
        "BUCKET": bucket,
        "WORKLOAD_OBJECT": METADATA.attribute(WORKLOAD_OBJECT_KEY),
        "WORKLOAD_SHA256": METADATA.attribute(WORKLOAD_SHA256_KEY),
    }
    secret = METADATA.attribute(PASSWORD_SECRET_KEY)
    zone = METADATA.optional("instance/zone", attempts=1).rsplit("/", 1)[-1]
    name = METADATA.optional("instance/name", attempts=1)
    status([f"run_id={run_id}", f"instance={name}", f"zone={zone}"], bucket)
    release = os_release(ROOT)
    os_id, version = release.get("ID", ""), release.get("VERSION_ID", "")
    pretty = release.get("PRETTY_NAME") or f"{os_id} {version}"
    if (os_id, version) not in SUPPORTED_OS:
        raise Failure(
            f"unsupported OS: {pretty}; supported are Ubuntu 22.04, Ubuntu 24.04 and Debian 12",
            "set the stack's image to ubuntu-2204, debian-12 or deeplearning",
            EXIT_UNSUPPORTED_OS,
        )
    if not SHA256.fullmatch(values["WORKLOAD_SHA256"]):
        raise Failure("kgg-workload-sha256 is not a SHA-256 hex digest", "run pulumi up again")
    try:
        check_secret_name(secret)
    except ContractError as error:
        raise Failure(str(error), "run pulumi up again") from error
    write_env(values | {"OS_ID": os_id})
    # Installed before the env: a VM whose boot fails must still power off when idle.
    subprocess.run(["systemctl", "daemon-reload"], check=True)
    on = settings["idle_shutdown_minutes"] > 0
    subprocess.run(["systemctl", "enable" if on else "disable", "--now", IDLE_TIMER], check=on)
    return (
        f"{pretty}; {settings['gpu_name']} x{settings['expected_gpus']} on "
        f"{settings['machine_type']} (spot: {str(settings['spot']).lower()}); run {run_id}"
    )


def idle_check(settings: dict) -> None:
    """The idle timer: the agent decides; without an env (a failed first boot) the uptime does,
    so a broken VM never keeps a GPU running."""
    if VENV_PYTHON.exists() and (APP / "kgg/agent").is_dir():
        os.environ["PYTHONPATH"] = str(APP)
        os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), "-m", "kgg.agent", "idle-check"])
    state = subprocess.run(
        ["systemctl", "show", "-p", "ActiveState", "--value", "google-startup-scripts.service"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    if state == "activating":  # a oneshot unit is "activating" while it runs
        log.info("idle check: the startup script is still running")
        return
    uptime = int(float((ROOT / "proc/uptime").read_text().split()[0]))
    if uptime < settings["idle_shutdown_minutes"] * 60:
        return
    log.info("idle check: no Python environment and up %ds; stopping the VM", uptime)
    bucket = METADATA.optional(ATTRIBUTES + BUCKET_KEY, attempts=2)
    group = METADATA.optional(ATTRIBUTES + GROUP_NAME_KEY, attempts=2)
    detail = f"stopped: no environment, up {uptime}s"
    status(["phase=idle", f"detail.idle={detail}"], bucket)
    if not group:
        subprocess.run(["shutdown", "-h", "now", f"keras-gpu-gcp: {detail}"], check=False)
        return
    # In a group, never power off (the group would recreate the VM at once): the stack's stop
    # workflow resizes the group to 0 and the group deletes the VM. The VM's account may only
    # start that workflow (docs/CONTRACTS.md, "Stopping itself").
    workflow = METADATA.optional(ATTRIBUTES + STOP_WORKFLOW_KEY, attempts=2)
    try:
        start_stop_workflow(ENDPOINTS, token(), workflow, check=False, attempts=3)
    except CloudError as error:
        failure = [
            "error.step=idle-stop",
            f"error.message=the VM could not stop itself: {error}",
            "error.hint=it keeps running and paying: kgg stop; check the VM's "
            "grant on its stop workflow (docs/CONTRACTS.md, 'Stopping itself')",
        ]
        status(failure, bucket)


def with_debian_components(line: str) -> str:
    """A sources line with every component the driver needs; other archives' lines unchanged."""
    words = line.split()
    if line.startswith("Components:"):
        return " ".join(["Components:", *_complete(words[1:])])
    if words[:1] in (["deb"], ["deb-src"]):
        urls = [i for i, word in enumerate(words) if "://" in word]
        if urls and "debian" in words[urls[0]] and len(words) > urls[0] + 1:
            suite_end = urls[0] + 2
            return " ".join([*words[:suite_end], *_complete(words[suite_end:])])
    return line


def _complete(components: list[str]) -> list[str]:
    return components + [c for c in DEBIAN_COMPONENTS if c not in components]


def debian_non_free(root: Path) -> None:
    for relative in DEBIAN_SOURCES:
        path = root / relative
        if not path.is_file():
            continue
        text = path.read_text()
        lines = [with_debian_components(line) for line in text.splitlines()]
        new = "\n".join(lines) + ("\n" if text.endswith("\n") else "")
        if new != text:
            path.write_text(new)


def extract_uv(wheel: Path, version: str, target: Path) -> None:
    with (
        zipfile.ZipFile(wheel) as archive,
        archive.open(f"uv-{version}.data/scripts/uv") as source,
        target.open("wb") as out,
    ):
        shutil.copyfileobj(source, out)


# `uv sync --directory APP` of the env, the VM's (startup.sh.j2 step_python, rendered from this)
# and a Vertex job's: the locked packages and extras only; the code runs from the app folder on
# PYTHONPATH.
UV_SYNC_FLAGS = ("--frozen", "--no-dev", "--no-default-groups", "--extra", "ml", "--extra", "vm",
                 "--no-install-project")  # fmt: skip
VERTEX_PINS = {  # the settings key -> the container's variable (kgg/cli/vertex_jobs.py sets them)
    "uv_version": UV_VERSION_ENV,
    "uv_wheel_url": UV_WHEEL_URL_ENV,
    "uv_wheel_sha256": UV_WHEEL_SHA256_ENV,
    "python_min": PYTHON_MIN_ENV,
    "python_max": PYTHON_MAX_ENV,
    "managed_python": MANAGED_PYTHON_ENV,
}
LOG_COPY_SECONDS = float(os.environ.get("KGG_LOG_COPY_SECONDS") or 15)
NETWORK_FIX = "the job's network needs outgoing HTTPS to pypi.org and files.pythonhosted.org"


def vertex(args: list[str]) -> None:
    """A Vertex AI job's container (kgg/cli/vertex_launcher.py runs this file from the extracted
    code archive): uv as the VM gets it, the locked env as the VM installs it, then the job as
    `python -m kgg ARGS...`, its output also in the run's train.log (run_teed); its exit code,
    75 when interrupted, is the container's. Everything lives beside the app folder
    (/opt/kgg/app -> /opt/kgg/...)."""
    if args[0] != "--":
        raise Failure(f"vertex takes -- KGG_ARGS..., not {args!r}", code=EXIT_USAGE)
    app = Path(__file__).resolve().parents[2]
    home = app.parent
    missing = [name for name in VERTEX_PINS.values() if not os.environ.get(name)]
    if missing:
        raise Failure(f"{', '.join(missing)} not set in the container: it was not created by this "
                      "version's `kgg submit` or `kgg sweep`; submit it again")  # fmt: skip
    pins = {key: os.environ[name] for key, name in VERTEX_PINS.items()}
    uv = home / "bin/uv"
    install_uv(pins, home / "uv.whl", uv)
    python, preference = python_for_uv(pins, sys.executable).split()
    venv = home / "venv"
    uv_env = {
        "UV_PROJECT_ENVIRONMENT": str(venv), "UV_PYTHON": python,
        "UV_PYTHON_PREFERENCE": preference, "UV_PYTHON_INSTALL_DIR": str(home / "python"),
        "UV_CACHE_DIR": str(home / "uv-cache"), "UV_LINK_MODE": "hardlink",
    }  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | uv_env
    log.info("installing the locked env with uv %s (%s)", pins["uv_version"], preference)
    started = time.monotonic()

    def sync() -> None:
        code = subprocess.run([str(uv), "sync", "--directory", str(app), *UV_SYNC_FLAGS], env=env,
                              check=False).returncode  # fmt: skip
        if code != 0:
            raise OSError(f"exit {code}")

    try:
        with_retries(sync, f"uv sync of {app / 'uv.lock'}")
    except CloudError as error:
        raise Failure(f"{error}; uv's output above says why; {NETWORK_FIX}") from error
    venv_python = venv / "bin/python"
    if not venv_python.exists():
        raise Failure(f"uv sync left no {venv_python}; uv's output above says why")
    log.info("env installed in %.0fs; running kgg %s", time.monotonic() - started,
             " ".join(args[1:]))  # fmt: skip
    job_env = {**os.environ, "PYTHONPATH": str(app)}
    argv = [str(venv_python), "-m", CLI_NAME, *args[1:]]
    sys.exit(run_teed(argv, job_env, home / TRAIN_LOG_FILE, vertex_log_copy(os.environ)))


def vertex_log_copy(env: dict[str, str] | os._Environ[str]) -> Path | None:
    """The run's train.log on the bucket's FUSE mount (<run folder>/train.log, the run folder
    being the one above AIP_MODEL_DIR, as the job takes it), or None outside a run folder."""
    folder = vertex_run_folder(env.get(VERTEX_MODEL_DIR_ENV, ""))
    if folder is None or not folder.startswith("gs://"):
        return None
    return ROOT / VERTEX_FUSE_ROOT.strip("/") / folder.removeprefix("gs://") / TRAIN_LOG_FILE


def run_teed(argv: list[str], env: dict[str, str], log_file: Path, copy_to: Path | None) -> int:
    """The job as a child: its stdout and stderr to ours (Vertex's Cloud Logging) and both to
    `log_file`, which is copied to `copy_to` every LOG_COPY_SECONDS and at the end, so `kgg logs`
    reads a Vertex run's log where it reads a VM run's. SIGTERM and SIGINT go on to the job
    (Vertex's stop: it exits 75 with its state saved); its exit code is returned."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    child = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, _frame: child.send_signal(number))
    done = threading.Event()

    def copy() -> None:
        if copy_to is None:
            return
        try:
            copy_to.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log_file, copy_to)
        except OSError as error:  # the log is a convenience: the job carries on without it
            log.warning("could not copy the job's log to %s: %s", copy_to, error)

    def keep_copying() -> None:
        while not done.wait(LOG_COPY_SECONDS):
            copy()

    copier = threading.Thread(target=keep_copying, daemon=True)
    written = threading.Lock()
    with log_file.open("wb") as out:

        def relay(source: int, ours: BinaryIO) -> None:
            for chunk in iter(lambda: os.read(source, 65536), b""):
                ours.write(chunk)
                ours.flush()
                with written:
                    out.write(chunk)
                    out.flush()

        assert child.stdout is not None and child.stderr is not None
        relays = [
            threading.Thread(target=relay, args=(pipe.fileno(), ours), daemon=True)
            for pipe, ours in ((child.stdout, sys.stdout.buffer), (child.stderr, sys.stderr.buffer))
        ]
        copier.start()
        for thread in relays:
            thread.start()
        for thread in relays:
            thread.join()
    code = child.wait()
    done.set()
    copier.join()
    copy()
    return code


def install_uv(pins: dict[str, str], wheel: Path, uv: Path) -> None:
    """The pinned uv wheel, checked against its hash, its binary at `uv`."""
    url, version = pins["uv_wheel_url"], pins["uv_version"]
    wheel.parent.mkdir(parents=True, exist_ok=True)
    try:
        fetch(url, wheel, pins["uv_wheel_sha256"])
    except HashMismatch as error:
        raise Failure(
            f"{error}: {UV_WHEEL_SHA256_ENV} and {UV_WHEEL_URL_ENV} disagree; submit "
            "again from a checkout whose kgg/startup/render.py pins uv"
        ) from error
    except CloudError as error:
        raise Failure(f"could not download uv {version}: {error}; {NETWORK_FIX}") from error
    uv.parent.mkdir(parents=True, exist_ok=True)
    extract_uv(wheel, version, uv)
    uv.chmod(0o755)
    wheel.unlink()


def _settings() -> dict:
    return json.loads(SETTINGS.read_text())


def _bucket() -> str:
    """The stack's bucket, which the script passes once preflight has read it."""
    return os.environ.get("BUCKET", "")


@dataclass(frozen=True)
class Command:
    run: Callable[[list[str]], object]
    usage: str  # its arguments as the help shows them: `X...` one or more, `[X...]` any
    help: str

    def accepts(self, args: list[str]) -> bool:
        words = self.usage.split()
        if words and words[-1].endswith("...]"):
            return len(args) >= len(words) - 1
        if words and words[-1].endswith("..."):
            return len(args) >= len(words)
        return len(args) == len(words)


COMMANDS = {
    "preflight": Command(lambda a: print(preflight(_settings())), "",
                         "metadata and OS checks; writes boot.env"),
    "attribute": Command(lambda a: print(METADATA.attribute(a[0])), "KEY",
                         "an instance attribute (retried)"),
    "fetch": Command(lambda a: fetch(a[0], Path(a[1]), a[2]), "URL DEST SHA256",
                     "a download, checked against its hash"),
    "install-code": Command(lambda a: install_code(_bucket(), a[0], a[1], Path(a[2])),
                            "OBJECT SHA256 DIR", "the code archive, checked, extracted into DIR"),
    "python-for-uv": Command(lambda a: print(python_for_uv(_settings())), "",
                             "the Python and preference for uv"),
    "wait-for": Command(lambda a: wait_for(float(a[0]), a[1:]), "SECONDS COMMAND...",
                        "until COMMAND succeeds (exit 1 when it never does)"),
    "status": Command(lambda a: status(a, _bucket()), "[KEY=VALUE...]",
                      "update the status document, then upload it"),
    "debian-non-free": Command(lambda a: debian_non_free(ROOT), "",
                               "add contrib and non-free to Debian's sources"),
    "extract-uv": Command(lambda a: extract_uv(Path(a[0]), a[1], Path(a[2])),
                          "WHEEL VERSION TARGET", "the uv binary out of its wheel"),
    "idle-check": Command(lambda a: idle_check(_settings()), "",
                          "the idle timer (the agent's, or by uptime)"),
    "vertex": Command(vertex, "-- KGG_ARGS...",
                      "a Vertex AI job: uv, the locked env, then python -m kgg KGG_ARGS"),
}  # fmt: skip


def usage() -> str:
    width = max(len(f"{name} {command.usage}") for name, command in COMMANDS.items())
    lines = [f"  bootstrap.py {f'{name} {c.usage}':<{width}}  {c.help}" for name, c in
             COMMANDS.items()]  # fmt: skip
    return "usage:\n" + "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv:
        print(usage(), file=sys.stderr)
        return EXIT_USAGE
    name, args = argv[0], argv[1:]
    command = COMMANDS.get(name)
    if command is None:
        print(f"bootstrap.py: unknown command {name!r}; one of {', '.join(COMMANDS)}",
              file=sys.stderr)  # fmt: skip
        return EXIT_USAGE
    if not command.accepts(args):
        print(f"bootstrap.py: {name} takes {command.usage or 'no arguments'}, not {args!r}",
              file=sys.stderr)  # fmt: skip
        return EXIT_USAGE
    configure_logging(STATE / "startup.log")
    try:
        command.run(args)
    except (Failure, CloudError, ChangeError, OSError, zipfile.BadZipFile, tarfile.TarError,
            KeyError, ValueError, subprocess.CalledProcessError) as error:  # fmt: skip
        message = str(error) or type(error).__name__
        hint = getattr(error, "hint", "")
        log.error("ERROR: %s", message)
        if os.environ.get("KGG_LAST_ERROR"):
            report = message + (f"\nhint: {hint}" if hint else "") + "\n"
            Path(os.environ["KGG_LAST_ERROR"]).write_text(report)
        return getattr(error, "code", EXIT_FAILED)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
