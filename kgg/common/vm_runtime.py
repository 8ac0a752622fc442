"""The VM's one cloud client, stdlib only (Python 3.10+): the startup script carries it verbatim
beside bootstrap.py, which runs before any env exists, and the agent imports it from the env.
It holds the endpoints (with their `KGG_*` test seams), the one retry rule, the metadata server
(values, the service account's token, guest attributes), Secret Manager, uploads to the bucket,
the upload budget of the status document, the stop workflow's start, the webhook post, and the
log line's format.

The retry rule: up to `KGG_RETRY_ATTEMPTS` (5) attempts, waiting `KGG_RETRY_BASE_SECONDS` (2)
doubled after each failure (2, 4, 8, 16 s); an answer that will not change (HTTP 400, 401, 403,
404) is not asked again. Errors name the host alone, never a URL's user:password@ part.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kgg.common.contract import ContractError, check_secret_name

T = TypeVar("T")

LOG_TAG = "keras-gpu-gcp"
LOG_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
log = logging.getLogger(LOG_TAG)

DEFAULT_ATTEMPTS = 5
DEFAULT_BASE_SECONDS = 2.0
# Answers that asking again will not change: a bad request, no credentials, no grant, no such key.
FINAL_HTTP = frozenset({400, 401, 403, 404})
# Failed uploads of the status document (and the startup log) may cost one boot, the startup
# script and the agent's boot together, this long; each upload gets two quick tries.
UPLOAD_BUDGET_SECONDS = 60.0
UPLOAD_TRIES = 2

# Where the metadata server keeps an instance's custom metadata (contract.*_KEY).
ATTRIBUTES = "instance/attributes/"
WORKFLOW_NAME = re.compile(r"projects/[a-z0-9.:-]+/locations/[a-z0-9-]+/workflows/[A-Za-z0-9_-]+")


class CloudError(RuntimeError):
    """The metadata server, a Google API or a webhook did not give what was asked for; `status`
    and `body` keep the last HTTP answer (None and "" when there was none)."""

    def __init__(self, message: str, status: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


def setting(name: str, default: float) -> float:
    """A number from `KGG_<name>` (the tests' seam), else `default`."""
    return float(os.environ.get(f"KGG_{name}") or default)


# --- the log line ---------------------------------------------------------------------------


def log_formatter() -> logging.Formatter:
    """`2026-01-02T03:04:05Z keras-gpu-gcp: message`, UTC, as the startup script's bash `log`."""
    formatter = logging.Formatter(f"%(asctime)s {LOG_TAG}: %(message)s", LOG_TIME_FORMAT)
    formatter.converter = time.gmtime
    return formatter


def configure_logging(log_file: Path | None) -> None:
    """One line per event to stderr (the journal, the serial console) and to `log_file` (the
    startup log the status document's tail comes from) when it can be opened."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            handlers.append(logging.FileHandler(log_file))
        except OSError:
            pass  # stderr still has it
    log.handlers.clear()
    for handler in handlers:
        handler.setFormatter(log_formatter())
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


# --- the endpoints --------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoints:
    metadata: str = "http://metadata.google.internal/computeMetadata/v1"
    secret_manager: str = "https://secretmanager.googleapis.com/v1"
    workflows: str = "https://workflowexecutions.googleapis.com/v1"
    gcs_api: str = "https://storage.googleapis.com/storage/v1"
    gcs_upload: str = "https://storage.googleapis.com/upload/storage/v1"

    @classmethod
    def from_environment(cls) -> Endpoints:
        defaults = cls()
        return cls(
            metadata=os.environ.get("KGG_METADATA_URL") or defaults.metadata,
            secret_manager=os.environ.get("KGG_SECRET_MANAGER_URL") or defaults.secret_manager,
            workflows=os.environ.get("KGG_WORKFLOWS_URL") or defaults.workflows,
            gcs_api=os.environ.get("KGG_GCS_API_URL") or defaults.gcs_api,
            gcs_upload=os.environ.get("KGG_GCS_UPLOAD_URL") or defaults.gcs_upload,
        )


# --- the one retry rule ---------------------------------------------------------------------


def _described(error: BaseException) -> tuple[str, bool, int | None, str]:
    """(one line, final?, HTTP status, HTTP body) for an error of one attempt."""
    if isinstance(error, urllib.error.HTTPError):
        try:
            body = error.read().decode(errors="replace")[:300].strip()
        except (OSError, ValueError):
            body = ""
        return f"HTTP {error.code} {error.reason}", error.code in FINAL_HTTP, error.code, body
    return str(getattr(error, "reason", error)) or type(error).__name__, False, None, ""


def with_retries(
    call: Callable[[], T],
    what: str,
    *,
    attempts: int | None = None,
    base_seconds: float | None = None,
    errors: tuple[type[BaseException], ...] = (OSError, ValueError),
    hide: str = "",
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """`call()`, under the retry rule above; CloudError "WHAT: ERROR (after N attempts)" when
    every attempt failed. `hide` (a URL's userinfo) is blanked out of every message."""
    if attempts is None:
        attempts = int(setting("RETRY_ATTEMPTS", DEFAULT_ATTEMPTS))
    base = base_seconds if base_seconds is not None else setting("RETRY_BASE_SECONDS",
                                                                 DEFAULT_BASE_SECONDS)  # fmt: skip
    attempt, message, status, body = 0, "", None, ""
    for attempt in range(1, max(attempts, 1) + 1):
        try:
            return call()
        except errors as error:
            message, final, status, body = _described(error)
        if hide:
            message, body = message.replace(hide, "***"), body.replace(hide, "***")
        if final:
            break
        if attempt < attempts:
            delay = base * 2 ** (attempt - 1)
            log.info("attempt %d of %d failed: %s; retrying in %gs", attempt, attempts, message,
                     delay)  # fmt: skip
            sleep(delay)
    plural = "s" if attempt > 1 else ""
    raise CloudError(f"{what}: {message} (after {attempt} attempt{plural})", status, body)


def request(
    url: str,
    *,
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
    method: str | None = None,
    timeout: float = 60,
    attempts: int | None = None,
    base_seconds: float | None = None,
) -> bytes:
    """The body of a GET (a POST with `data`, or `method`), under the retry rule. Messages name
    the host alone: a netloc may carry user:password@, and urllib's own errors repeat it."""
    userinfo, _, host = urllib.parse.urlsplit(url).netloc.rpartition("@")

    def once() -> bytes:
        call = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
        with urllib.request.urlopen(call, timeout=timeout) as response:
            return bytes(response.read())

    return with_retries(once, host or "the server", attempts=attempts, base_seconds=base_seconds,
                        hide=userinfo)  # fmt: skip


def quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


# --- the metadata server --------------------------------------------------------------------


@dataclass(frozen=True)
class Metadata:
    url: str
    attempts: int | None = None  # None: the retry rule's

    def get(self, path: str, attempts: int | None = None) -> str:
        """A metadata value, retried: the metadata server can lag right after boot."""
        chosen = attempts if attempts is not None else self.attempts
        headers = {"Metadata-Flavor": "Google"}
        body = request(f"{self.url}/{path}", headers=headers, timeout=10, attempts=chosen)
        return body.decode()

    def optional(self, path: str, attempts: int | None = None) -> str:
        """The value, or "" when there is none (or it cannot be read)."""
        try:
            return self.get(path, attempts)
        except CloudError:
            return ""

    def attribute(self, key: str) -> str:
        return self.get(f"{ATTRIBUTES}{key}")

    def token(self) -> str:
        """The VM's service account's access token; never logged."""
        try:
            answer = json.loads(self.get("instance/service-accounts/default/token"))
            return str(answer["access_token"])
        except (ValueError, KeyError, TypeError) as error:
            raise CloudError("the metadata server returned no access token") from error

    def put_guest_attribute(self, path: str, value: str) -> None:
        """Writes the guest attribute `namespace/key` (readable through the Compute API by whoever
        may see the VM; enable-guest-attributes must be TRUE, else GCE refuses)."""
        url = f"{self.url}/instance/guest-attributes/{path}"
        headers = {"Metadata-Flavor": "Google"}
        try:
            request(url, headers=headers, data=value.encode(), method="PUT", timeout=10,
                    attempts=1)  # fmt: skip
        except CloudError as error:
            raise CloudError(f"guest attribute {path}: {error}", error.status) from error


# --- Google APIs with the VM's token --------------------------------------------------------


def read_secret(endpoints: Endpoints, metadata: Metadata, secret: str, what: str) -> str:
    """The secret's newest version as text ("" when its payload is not text), with the VM's
    service account; never logged."""
    try:
        check_secret_name(secret, source=f"the secret of {what}")
    except ContractError as error:
        raise CloudError(str(error)) from error
    try:
        body = request(
            f"{endpoints.secret_manager}/{secret}/versions/latest:access",
            headers={"Authorization": f"Bearer {metadata.token()}"},
            timeout=30,
        )
        answer: Any = json.loads(body)
    except (CloudError, ValueError) as error:
        raise CloudError(
            f"could not read {what} from Secret Manager ({secret}): {error}"
        ) from error
    try:
        return base64.b64decode(answer["payload"]["data"]).decode().strip()
    except (KeyError, TypeError, ValueError):
        return ""


def upload_object(
    endpoints: Endpoints,
    metadata: Metadata,
    bucket: str,
    name: str,
    data: bytes,
    content_type: str,
    *,
    attempts: int | None = None,
    base_seconds: float | None = None,
) -> None:
    """One object into the bucket (the JSON API's media upload)."""
    url = f"{endpoints.gcs_upload}/b/{bucket}/o?uploadType=media&name={quote(name)}"
    headers = {"Authorization": f"Bearer {metadata.token()}", "Content-Type": content_type}
    request(url, headers=headers, data=data, timeout=20, attempts=attempts,
            base_seconds=base_seconds)  # fmt: skip


def start_stop_workflow(
    endpoints: Endpoints, token: str, workflow: str, *, check: bool, attempts: int | None = None
) -> dict[str, Any]:
    """Starts the stack's stop workflow (`check`: it only reads the VM's group); returns the new
    execution. The VM's account may start this one workflow and nothing else."""
    if not WORKFLOW_NAME.fullmatch(workflow):
        raise CloudError(
            f"kgg-stop-workflow {workflow!r} is not projects/P/locations/L/workflows/W"
        )
    body = json.dumps({"argument": json.dumps({"check": check})}).encode()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    answer = request(f"{endpoints.workflows}/{workflow}/executions", headers=headers, data=body,
                     timeout=30, attempts=attempts)  # fmt: skip
    try:
        execution = json.loads(answer)
    except ValueError as error:
        raise CloudError(f"the stop workflow {workflow} answered no JSON") from error
    if not isinstance(execution, dict):
        raise CloudError(f"the stop workflow {workflow} answered no execution")
    return execution


# --- the status document's upload budget ----------------------------------------------------


class UploadBudget:
    """Seconds that failed uploads may still cost: in `file` when the startup script and the
    agent's boot share one budget, else in memory (a service has its own). An upload that fails
    never stops what the VM is doing."""

    def __init__(
        self,
        file: Path | None = None,
        seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.file = file
        limit = seconds if seconds is not None else setting("STATUS_UPLOAD_BUDGET_SECONDS",
                                                            UPLOAD_BUDGET_SECONDS)  # fmt: skip
        self.seconds = limit
        self.clock = clock
        self._spent = 0.0

    @property
    def spent(self) -> float:
        if self.file is None:
            return self._spent
        try:
            return float(self.file.read_text())
        except (OSError, ValueError):
            return 0.0

    @spent.setter
    def spent(self, seconds: float) -> None:
        if self.file is None:
            self._spent = seconds
        else:
            self.file.write_text(f"{seconds:.1f}\n")

    @property
    def exhausted(self) -> bool:
        return self.spent >= self.seconds

    def upload(self, what: str, upload: Callable[[], None], local: Path | None = None) -> bool:
        """`upload()` (which makes its UPLOAD_TRIES quick tries) unless the budget is spent; a
        failure adds its time to the budget. True when it was uploaded."""
        if self.exhausted:
            return False
        started = self.clock()
        try:
            upload()
            return True
        except Exception as error:  # any failure: the VM goes on without the upload
            log.warning("could not upload %s (continuing): %s", what, error)
        self.spent += self.clock() - started
        if self.exhausted:
            where = f" (local: {local})" if local else ""
            log.warning("uploads failed for %.0fs: no more from this boot%s", self.spent, where)
        return False


# --- the webhook ----------------------------------------------------------------------------

# Slack reads `&`, `<` and `>` as its markup (`<!channel>`, `<https://x|a disguised link>`): these
# three, and only these, are escaped. https://api.slack.com/reference/surfaces/formatting#escaping
SLACK_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
# Discord's markdown (masked links are `[text](url)`) shown as the characters themselves; its
# mentions (`@everyone`, `<@id>`) notify no one: allowed_mentions parses none.
# https://discord.com/developers/docs/resources/message#allowed-mentions-object
DISCORD_MARKDOWN = frozenset("\\*_~`|[]<>@#")
WEBHOOK_ATTEMPTS = 3


def slack_text(text: str) -> str:
    return "".join(SLACK_ESCAPES.get(char, char) for char in text)


def discord_text(text: str) -> str:
    return "".join(f"\\{char}" if char in DISCORD_MARKDOWN else char for char in text)


def webhook_payload(url: str, text: str, fields: dict[str, Any]) -> dict[str, Any]:
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


def post_webhook(url: str, text: str, fields: dict[str, Any]) -> None:
    """One message to the stack's webhook; the URL is a secret and is never logged, and one with
    a user:password@ part is refused before anything could log it."""
    if not url.startswith(("https://", "http://")):
        raise CloudError("the webhook's secret holds no http(s) URL")
    if "@" in urllib.parse.urlsplit(url).netloc:
        raise CloudError(
            "the webhook URL has a user:password@ part, refused: it would reach the logs "
            "(notifyWebhook: use the URL the service gives)"
        )
    data = json.dumps(webhook_payload(url, text, fields)).encode()
    headers = {"Content-Type": "application/json", "User-Agent": LOG_TAG}
    request(url, headers=headers, data=data, timeout=15, attempts=WEBHOOK_ATTEMPTS)
