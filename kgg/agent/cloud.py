"""What the agent asks the cloud: instance metadata and the service account's token (the
metadata server), the Jupyter password hash (Secret Manager's one REST call), its stop workflow
(Workflow Executions' create and get), and objects in the stack's bucket (google-cloud-storage,
with the VM's credentials, also against STORAGE_EMULATOR_HOST)."""

from __future__ import annotations

import base64
import json
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from kgg.agent.config import Endpoints

RUN_ID = re.compile(r"[A-Za-z0-9._-]+")
WORKFLOW_NAME = re.compile(r"projects/[a-z0-9.:-]+/locations/[a-z0-9-]+/workflows/[A-Za-z0-9_-]+")
EXECUTION_WAIT_SECONDS = 60.0
SECRET_NAME = re.compile(r"projects/[A-Za-z0-9_-]+/secrets/[A-Za-z0-9_-]+")


class CloudError(RuntimeError):
    """The metadata server, Secret Manager or the bucket did not give what was asked for."""


@dataclass(frozen=True)
class Metadata:
    url: str
    attempts: int = 5

    def get(self, path: str) -> str:
        """A metadata value, retried: the metadata server can lag right after boot."""
        request = urllib.request.Request(
            f"{self.url}/{path}", headers={"Metadata-Flavor": "Google"}
        )
        error: Exception | None = None
        for attempt in range(self.attempts):
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return response.read().decode()
            except urllib.error.HTTPError as failure:
                if failure.code == 404:  # no such key: asking again will not make one
                    raise CloudError(f"metadata {path}: {failure}") from failure
                error = failure
            except (OSError, urllib.error.URLError) as failure:
                error = failure
            time.sleep(min(2**attempt, 10) if attempt + 1 < self.attempts else 0)
        raise CloudError(f"metadata {path}: {error}")

    def attribute(self, key: str) -> str:
        return self.get(f"instance/attributes/{key}")

    def put_guest_attribute(self, path: str, value: str) -> None:
        """Writes the guest attribute `namespace/key` (readable through the Compute API by whoever
        may see the VM; enable-guest-attributes must be TRUE, else GCE refuses)."""
        request = urllib.request.Request(
            f"{self.url}/instance/guest-attributes/{path}",
            data=value.encode(),
            method="PUT",
            headers={"Metadata-Flavor": "Google"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10):
                return
        except (OSError, urllib.error.URLError) as failure:
            raise CloudError(f"guest attribute {path}: {failure}") from failure

    def token(self) -> str:
        answer = json.loads(self.get("instance/service-accounts/default/token"))
        return str(answer["access_token"])


@dataclass(frozen=True)
class Instance:
    """The metadata the agent needs, read once per command and checked."""

    bucket: str
    run_id: str
    password_secret: str
    external_ip: str
    name: str
    zone: str
    # The VM's managed instance group (issue 12); empty for a VM made on its own.
    group: str = ""
    group_region: str = ""
    project: str = ""
    workspace_prefix: str = ""
    # The notification webhook URL's secret (notifyWebhook); empty: no notifications.
    notify_secret: str = ""
    # The workflow that stops this VM (resizes its group to 0), projects/P/locations/R/workflows/W.
    stop_workflow: str = ""

    @property
    def workspace_url(self) -> str | None:
        prefix = self.workspace_prefix.strip("/")
        return f"gs://{self.bucket}/{prefix}" if prefix else None

    @classmethod
    def read(cls, metadata: Metadata) -> Instance:
        def optional(path: str) -> str:
            try:
                return metadata.get(path)
            except CloudError:
                return ""

        run_id = metadata.attribute("kgg-run-id")
        if not RUN_ID.fullmatch(run_id):
            raise CloudError(f"kgg-run-id {run_id!r} is not a run id (letters, digits, . _ -)")
        secret = metadata.attribute("kgg-jupyter-password-secret")
        if not SECRET_NAME.fullmatch(secret):
            raise CloudError(f"kgg-jupyter-password-secret {secret!r} is not projects/P/secrets/S")
        return cls(
            bucket=metadata.attribute("kgg-bucket"),
            run_id=run_id,
            password_secret=secret,
            external_ip=optional("instance/network-interfaces/0/access-configs/0/external-ip"),
            name=optional("instance/name"),
            zone=optional("instance/zone").rsplit("/", 1)[-1],
            group=optional("instance/attributes/kgg-instance-group"),
            group_region=optional("instance/attributes/kgg-instance-group-region"),
            project=optional("project/project-id"),
            workspace_prefix=optional("instance/attributes/kgg-workspace-prefix"),
            notify_secret=optional("instance/attributes/kgg-notify-webhook-secret"),
            stop_workflow=optional("instance/attributes/kgg-stop-workflow"),
        )


def read_password_hash(endpoints: Endpoints, metadata: Metadata, secret: str) -> str:
    """The Jupyter argon2 hash from the secret's newest version; never logged."""
    value = read_secret(endpoints, metadata, secret, "the Jupyter password hash")
    if not value.startswith("argon2:"):
        raise CloudError(f"{secret} holds no Jupyter argon2 hash")
    return value


def read_secret(endpoints: Endpoints, metadata: Metadata, secret: str, what: str) -> str:
    """The secret's newest version as text, with the VM's service account; never logged."""
    request = urllib.request.Request(
        f"{endpoints.secret_manager}/{secret}/versions/latest:access",
        headers={"Authorization": f"Bearer {metadata.token()}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            answer: Any = json.load(response)
    except (OSError, ValueError) as error:
        raise CloudError(
            f"could not read {what} from Secret Manager ({secret}): {error}"
        ) from error
    try:
        return base64.b64decode(answer["payload"]["data"]).decode().strip()
    except (KeyError, TypeError, ValueError):
        return ""


def _call(url: str, token: str, body: bytes | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    request = urllib.request.Request(url, data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def run_stop_workflow(
    endpoints: Endpoints,
    metadata: Metadata,
    workflow: str,
    *,
    check: bool,
    wait: float = EXECUTION_WAIT_SECONDS,
    poll: float = 1.0,
) -> str:
    """Runs the stack's stop workflow and waits for its end: with `check`, it only reads the
    VM's group (is the stop path authorized?); without, it resizes the group to 0, and the group
    deletes this VM. Returns the workflow's result; CloudError says why it did not succeed. The
    VM's account may start this one workflow and nothing else (docs/ARCHITECTURE.md)."""
    what = "checking" if check else "running"
    if not WORKFLOW_NAME.fullmatch(workflow):
        raise CloudError(
            f"kgg-stop-workflow {workflow!r} is not projects/P/locations/L/workflows/W"
        )
    argument = json.dumps({"argument": json.dumps({"check": check})}).encode()
    try:
        token = metadata.token()
        execution = _call(f"{endpoints.workflows}/{workflow}/executions", token, argument)
        deadline = time.monotonic() + wait
        while execution.get("state") == "ACTIVE" and time.monotonic() < deadline:
            time.sleep(poll)
            execution = _call(f"{endpoints.workflows}/{execution['name']}", token)
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace")[:300].strip()
        raise CloudError(f"{what} the stop workflow {workflow}: {error} {detail}") from error
    except (OSError, ValueError, KeyError) as error:
        raise CloudError(f"{what} the stop workflow {workflow}: {error}") from error
    state = execution.get("state")
    if state != "SUCCEEDED":
        failure = str((execution.get("error") or {}).get("payload") or state)[:300]
        raise CloudError(f"{what} the stop workflow {workflow}: {state}: {failure}")
    return str(execution.get("result") or "")


class Bucket:
    """Uploads to the stack's bucket with google-cloud-storage (imported on first use), with the
    VM's credentials (kgg.common.storage's client: also against the tests' GCS front)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._client: Any = None

    def upload(self, object_name: str, data: bytes, content_type: str) -> None:
        if self._client is None:
            from kgg.common import storage

            self._client = storage.client()
        blob = self._client.bucket(self.name).blob(object_name)
        blob.upload_from_string(data, content_type=content_type, timeout=20, retry=None)
