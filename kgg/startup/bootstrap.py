"""The startup script's helper before the VM has a Python environment, run by the image's own
python3 (stdlib only, Python 3.10+): metadata, downloads, and the status document. The rendered
script carries this file and kgg/common/documents.py and writes them to
/opt/keras-gpu-gcp/bootstrap/ at every boot.

    bootstrap.py preflight                        metadata and OS checks; writes boot.env
    bootstrap.py attribute KEY                    an instance attribute (retried)
    bootstrap.py fetch URL DEST SHA256            a download, checked against its hash
    bootstrap.py install-code OBJECT SHA256 DIR   the code archive, checked, extracted into DIR
    bootstrap.py python-for-uv                    the Python and preference for uv (see below)
    bootstrap.py wait-for SECONDS COMMAND...      until COMMAND succeeds (exit 1 when it never does)
    bootstrap.py status KEY=VALUE...              update the status document, then upload it
    bootstrap.py debian-non-free                  add contrib and non-free to Debian's sources
    bootstrap.py extract-uv WHEEL VERSION TARGET  the uv binary out of its wheel
    bootstrap.py idle-check                       the idle timer (the agent's, or by uptime)

A failure prints one line naming what failed and why (and a line "hint: ..." where there is
one) to stderr and to $KGG_LAST_ERROR: the script puts them in the status document.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from kgg.common.documents import ChangeError, update_file

EXIT_FAILED = 1
EXIT_UNSUPPORTED_OS = 3  # named, so the serial console says what kind of failure it was
EXIT_USAGE = 64
SUPPORTED_OS = {("ubuntu", "22.04"), ("ubuntu", "24.04"), ("debian", "12")}
RUN_ID = re.compile(r"[A-Za-z0-9._-]+")
SHA256 = re.compile(r"[0-9a-f]{64}")
SECRET = re.compile(r"projects/[A-Za-z0-9_-]+/secrets/[A-Za-z0-9_-]+")
IDLE_TIMER = "kgg-idle-check.timer"
DEBIAN_COMPONENTS = ("main", "contrib", "non-free", "non-free-firmware")
# Debian's sources in both formats: deb822 (GCE's images) and the one-line sources.list.
DEBIAN_SOURCES = ("etc/apt/sources.list.d/debian.sources", "etc/apt/sources.list")
STATUS_OBJECT = "status/startup.json"
LOG_OBJECT = "logs/startup.log"  # kgg/agent/logsync.py keeps it up to date after the env


class Failure(Exception):
    """What failed, in one line for the status document, with what to try and an exit code."""

    def __init__(self, message: str, hint: str = "", code: int = 1) -> None:
        super().__init__(message)
        self.hint = hint
        self.code = code


class HashMismatch(Failure):
    """A download is not what its pinned hash says."""


def env(name: str, default: str) -> str:
    return os.environ.get(f"KGG_{name}") or default


ROOT = Path(env("ROOT", "/"))
STATE = ROOT / "var/lib/keras-gpu-gcp"
SETTINGS = ROOT / "etc/keras-gpu-gcp/settings.json"
VENV_PYTHON = ROOT / "opt/keras-gpu-gcp/venv/bin/python"
APP = ROOT / "opt/keras-gpu-gcp/app"
METADATA_URL = env("METADATA_URL", "http://metadata.google.internal/computeMetadata/v1")
GCS_API_URL = env("GCS_API_URL", "https://storage.googleapis.com/storage/v1")
GCS_UPLOAD_URL = env("GCS_UPLOAD_URL", "https://storage.googleapis.com/upload/storage/v1")
WORKFLOWS_URL = env("WORKFLOWS_URL", "https://workflowexecutions.googleapis.com/v1")
SECRET_MANAGER_URL = env("SECRET_MANAGER_URL", "https://secretmanager.googleapis.com/v1")
NOTIFY_KEY = "instance/attributes/kgg-notify-webhook-secret"
GROUP_KEY = "instance/attributes/kgg-instance-group"
STOP_WORKFLOW_KEY = "instance/attributes/kgg-stop-workflow"
WORKFLOW = re.compile(r"projects/[a-z0-9.:-]+/locations/[a-z0-9-]+/workflows/[A-Za-z0-9_-]+")
ATTEMPTS = int(env("RETRY_ATTEMPTS", "5"))
BASE_SECONDS = float(env("RETRY_BASE_SECONDS", "2"))
# Failed status uploads may cost a boot this long in all (the agent goes on counting).
UPLOAD_BUDGET_SECONDS = float(env("STATUS_UPLOAD_BUDGET_SECONDS", "60"))


def log(message: str) -> None:
    line = f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} keras-gpu-gcp: {message}"
    print(line, file=sys.stderr, flush=True)
    try:
        with (STATE / "startup.log").open("a") as file:
            file.write(line + "\n")
    except OSError:
        pass


def request(url: str, *, headers: dict[str, str] | None = None, data: bytes | None = None,
            timeout: float = 60, attempts: int = ATTEMPTS) -> bytes:  # fmt: skip
    """The body of a GET (or POST with data), retried with backoff; Failure with the last
    error. Messages name the host alone: a netloc may carry user:password@, and urllib's own
    errors repeat it, so it is blanked out of them too."""
    parts = urllib.parse.urlsplit(url)
    userinfo, _, host = parts.netloc.rpartition("@")
    error = ""
    for attempt in range(1, attempts + 1):
        try:
            call = urllib.request.Request(url, data=data, headers=headers or {})
            with urllib.request.urlopen(call, timeout=timeout) as response:
                return response.read()
        except urllib.error.HTTPError as failure:
            error = f"HTTP {failure.code} {failure.reason}"
            if failure.code in (400, 401, 403, 404):
                break  # the answer will not change
        except (OSError, ValueError) as failure:
            error = str(getattr(failure, "reason", failure))
        if userinfo:
            error = error.replace(userinfo, "***")
        if attempt < attempts:
            delay = BASE_SECONDS * 2 ** (attempt - 1)
            log(f"attempt {attempt} of {attempts} failed: {error}; retrying in {delay:g}s")
            time.sleep(delay)
    plural = "s" if attempt > 1 else ""
    raise Failure(f"{host or 'the server'}: {error} (after {attempt} attempt{plural})")


def metadata(path: str, attempts: int = ATTEMPTS) -> str:
    url = f"{METADATA_URL}/{path}"
    return request(url, headers={"Metadata-Flavor": "Google"}, attempts=attempts).decode()


def token() -> str:
    answer = json.loads(metadata("instance/service-accounts/default/token"))
    if "access_token" not in answer:
        raise Failure("the metadata server returned no access token")
    return str(answer["access_token"])


def quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def fetch(url: str, dest: Path, sha256: str, headers: dict[str, str] | None = None) -> None:
    """Downloads `url` to `dest`; a body that does not hash to `sha256` is refused."""
    body = request(url, headers=headers, timeout=600)
    if hashlib.sha256(body).hexdigest() != sha256:
        raise HashMismatch(f"{url} does not match its expected SHA-256 {sha256[:16]}...")
    dest.write_bytes(body)


def install_code(bucket: str, name: str, sha256: str, target: Path) -> None:
    """The code archive, checked against its hash, extracted root-owned (no links, nothing
    outside the folder) into `target`, which it replaces whole."""
    url = f"{GCS_API_URL}/b/{bucket}/o/{quote(name)}?alt=media"
    archive = target.with_name(f"{target.name}.tar.gz")
    try:
        fetch(url, archive, sha256, {"Authorization": f"Bearer {token()}"})
    except HashMismatch as error:
        raise Failure(f"gs://{bucket}/{name} does not match kgg-workload-sha256") from error
    except Failure as error:
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


def python_for_uv(settings: dict) -> str:
    """`PYTHON PREFERENCE` for uv: every locked wheel (TensorFlow's above all) exists for CPython
    python_min..python_max; the image's python3 is used when in that range (Debian 12: 3.11),
    else uv downloads managed_python (Ubuntu 22.04 ships 3.10)."""
    system = str(ROOT / "usr/bin/python3")
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


def status(changes: list[str], bucket: str) -> None:
    """Updates the local document and uploads it with two quick tries, unless failed uploads
    have used up this boot's budget (kept in a file the agent reads too)."""
    path = STATE / "status.json"
    budget = STATE / "status-upload-seconds"

    def upload(data: bytes) -> None:
        try:
            spent = float(budget.read_text())
        except (OSError, ValueError):
            spent = 0.0
        if not bucket or spent >= UPLOAD_BUDGET_SECONDS:
            return
        started = time.monotonic()
        url = f"{GCS_UPLOAD_URL}/b/{bucket}/o?uploadType=media&name={quote(STATUS_OBJECT)}"
        try:
            headers = {"Authorization": f"Bearer {token()}", "Content-Type": "application/json"}
            request(url, headers=headers, data=data, timeout=20, attempts=2)
            return
        except Failure as error:
            log(f"could not upload the status document (continuing): {error}")
        spent += time.monotonic() - started
        budget.write_text(f"{spent:.1f}\n")
        if spent >= UPLOAD_BUDGET_SECONDS:
            log(f"status uploads failed for {spent:.0f}s: no more from this boot (local: {path})")

    update_file(path, changes, upload)
    if "phase=failed" in changes:
        notify_startup_failure(changes)
    if any(re.fullmatch(r"step\.[a-z-]+=(done|skipped|failed)", change) for change in changes):
        upload_log(bucket, budget)


def upload_log(bucket: str, budget: Path) -> None:
    """The startup log to logs/startup.log at a step's end (the agent's log sync takes over
    once the env exists); within the same budget as the status uploads."""
    try:
        spent = float(budget.read_text())
    except (OSError, ValueError):
        spent = 0.0
    log_file = STATE / "startup.log"
    if not bucket or spent >= UPLOAD_BUDGET_SECONDS or not log_file.is_file():
        return
    started = time.monotonic()
    url = f"{GCS_UPLOAD_URL}/b/{bucket}/o?uploadType=media&name={quote(LOG_OBJECT)}"
    try:
        headers = {"Authorization": f"Bearer {token()}", "Content-Type": "text/plain"}
        request(url, headers=headers, data=log_file.read_bytes(), timeout=20, attempts=2)
        return
    except (Failure, OSError) as error:
        log(f"could not upload the startup log (continuing): {error}")
    budget.write_text(f"{spent + time.monotonic() - started:.1f}\n")


# Slack reads `&`, `<` and `>` as its markup (`<!channel>`, `<https://x|a disguised link>`): these
# three, and only these, are escaped. https://api.slack.com/reference/surfaces/formatting#escaping
SLACK_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
# Discord's markdown (masked links are `[text](url)`) shown as the characters themselves; its
# mentions (`@everyone`, `<@id>`) notify no one: allowed_mentions parses none.
# https://discord.com/developers/docs/resources/message#allowed-mentions-object
DISCORD_MARKDOWN = frozenset("\\*_~`|[]<>@#")


def slack_text(text: str) -> str:
    return "".join(SLACK_ESCAPES.get(char, char) for char in text)


def discord_text(text: str) -> str:
    return "".join(f"\\{char}" if char in DISCORD_MARKDOWN else char for char in text)


def webhook_payload(url: str, text: str, fields: dict) -> dict:
    """Slack's incoming webhooks take `text`, Discord's `content`; any other gets the text and
    the fields as JSON. Parts of the text come from the bucket (a run's metrics, an error
    message), whose writers must not post `<!channel>`, `@everyone` or a disguised link as the
    bot: Slack's markup is escaped, Discord's markdown too, and Discord mentions nobody."""
    host = (urllib.parse.urlsplit(url).hostname or "").lower()
    if host == "hooks.slack.com":
        return {"text": slack_text(text)}
    if ".".join(host.split(".")[-2:]) in ("discord.com", "discordapp.com"):
        return {"content": discord_text(text), "allowed_mentions": {"parse": []}}
    return {"text": text, **fields}


def post_webhook(url: str, text: str, fields: dict) -> None:
    """One message to the stack's webhook; the URL is a secret and is never logged, and one with
    a user:password@ part is refused before anything could log it."""
    if "@" in urllib.parse.urlsplit(url).netloc:
        raise Failure(
            "the webhook URL has a user:password@ part, refused: it would reach the logs "
            "(notifyWebhook: use the URL the service gives)"
        )
    data = json.dumps(webhook_payload(url, text, fields)).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "keras-gpu-gcp"}
    request(url, headers=headers, data=data, timeout=15, attempts=3)


def notify_startup_failure(changes: list[str]) -> None:
    """Before the env: the webhook (if the stack has one) hears that the startup script failed.
    A notification that cannot be sent is logged; it never changes the script's outcome."""
    try:
        secret = metadata(NOTIFY_KEY, attempts=2)
    except Failure:
        return  # no notifyWebhook on this stack
    fields = dict(change.partition("=")[::2] for change in changes)
    step, message = fields.get("error.step", "?"), fields.get("error.message", "")
    try:
        if not SECRET.fullmatch(secret):
            raise Failure(f"{NOTIFY_KEY} {secret!r} is not projects/P/secrets/S")
        call = f"{SECRET_MANAGER_URL}/{secret}/versions/latest:access"
        answer = json.loads(request(call, headers={"Authorization": f"Bearer {token()}"}))
        url = base64.b64decode(answer["payload"]["data"]).decode().strip()
        name = metadata("instance/name", attempts=1)
        text = f"keras-gpu-gcp: the startup script failed on {name} at step {step}: {message}"
        post_webhook(url, text, {"event": "startup-failed", "instance": name, "step": step,
                                 "message": message})  # fmt: skip
    except (Failure, KeyError, TypeError, ValueError) as error:
        log(f"could not send the failure notification (continuing): {error}")


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
    bucket = metadata("instance/attributes/kgg-bucket")
    # The bucket first: with it known, even an unsupported OS shows up in the status document.
    write_env({"BUCKET": bucket})
    run_id = metadata("instance/attributes/kgg-run-id")
    if not RUN_ID.fullmatch(run_id):
        raise Failure(f"kgg-run-id {run_id!r} is not a run id (letters, digits, . _ -)")
    values = {
        "BUCKET": bucket,
        "WORKLOAD_OBJECT": metadata("instance/attributes/kgg-workload-object"),
        "WORKLOAD_SHA256": metadata("instance/attributes/kgg-workload-sha256"),
    }
    secret = metadata("instance/attributes/kgg-jupyter-password-secret")

    def optional(path: str) -> str:
        try:
            return metadata(path, attempts=1)
        except Failure:
            return ""

    zone = optional("instance/zone").rsplit("/", 1)[-1]
    status([f"run_id={run_id}", f"instance={optional('instance/name')}", f"zone={zone}"],
           bucket)  # fmt: skip
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
    if not SECRET.fullmatch(secret):
        raise Failure(
            f"kgg-jupyter-password-secret {secret!r} is not a secret (projects/P/secrets/S)",
            "run pulumi up again",
        )
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
        log("idle check: the startup script is still running")
        return
    uptime = int(float((ROOT / "proc/uptime").read_text().split()[0]))
    if uptime < settings["idle_shutdown_minutes"] * 60:
        return
    log(f"idle check: no Python environment and up {uptime}s; stopping the VM")

    def optional(key: str) -> str:
        try:
            return metadata(key, attempts=2)
        except Failure:
            return ""

    bucket, group = optional("instance/attributes/kgg-bucket"), optional(GROUP_KEY)
    detail = f"stopped: no environment, up {uptime}s"
    status(["phase=idle", f"detail.idle={detail}"], bucket)
    if not group:
        subprocess.run(["shutdown", "-h", "now", f"keras-gpu-gcp: {detail}"], check=False)
        return
    # In a group, never power off (the group would recreate the VM at once): the stack's stop
    # workflow resizes the group to 0 and the group deletes the VM. The VM's account may only
    # start that workflow (docs/ARCHITECTURE.md, "Stopping itself").
    workflow = optional(STOP_WORKFLOW_KEY)
    try:
        if not WORKFLOW.fullmatch(workflow):
            raise Failure(
                f"kgg-stop-workflow {workflow!r} is not projects/P/locations/L/workflows/W"
            )
        body = json.dumps({"argument": json.dumps({"check": False})}).encode()
        headers = {"Authorization": f"Bearer {token()}", "Content-Type": "application/json"}
        request(f"{WORKFLOWS_URL}/{workflow}/executions", data=body, attempts=3, headers=headers)
    except Failure as error:
        failure = [
            "error.step=idle-stop",
            f"error.message=the VM could not stop itself: {error}",
            "error.hint=it keeps running and paying: kgg stop; check the VM's "
            "grant on its stop workflow (docs/ARCHITECTURE.md, 'Stopping itself')",
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


def main(argv: list[str]) -> int:
    command, args = (argv[0], argv[1:]) if argv else ("", [])
    bucket = os.environ.get("BUCKET", "")
    try:
        if command == "preflight" and not args:
            print(preflight(json.loads(SETTINGS.read_text())))
        elif command == "attribute" and len(args) == 1:
            print(metadata(f"instance/attributes/{args[0]}"))
        elif command == "idle-check" and not args:
            idle_check(json.loads(SETTINGS.read_text()))
        elif command == "fetch" and len(args) == 3:
            fetch(args[0], Path(args[1]), args[2])
        elif command == "install-code" and len(args) == 3:
            install_code(bucket, args[0], args[1], Path(args[2]))
        elif command == "python-for-uv" and not args:
            print(python_for_uv(json.loads(SETTINGS.read_text())))
        elif command == "wait-for" and len(args) >= 2:
            wait_for(float(args[0]), args[1:])
        elif command == "status":
            status(args, bucket)
        elif command == "debian-non-free" and not args:
            debian_non_free(ROOT)
        elif command == "extract-uv" and len(args) == 3:
            extract_uv(Path(args[0]), args[1], Path(args[2]))
        else:
            print(__doc__, file=sys.stderr)
            return EXIT_USAGE
    except (Failure, ChangeError, OSError, zipfile.BadZipFile, tarfile.TarError, KeyError,
            ValueError, subprocess.CalledProcessError) as error:  # fmt: skip
        message = str(error) or type(error).__name__
        hint = getattr(error, "hint", "")
        log(f"ERROR: {message}")
        if os.environ.get("KGG_LAST_ERROR"):
            report = message + (f"\nhint: {hint}" if hint else "") + "\n"
            Path(os.environ["KGG_LAST_ERROR"]).write_text(report)
        return getattr(error, "code", EXIT_FAILED)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
