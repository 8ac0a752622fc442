"""What the agent asks the cloud beyond kgg/common/vm_runtime.py (the VM's one stdlib client,
the startup script's too): the instance's metadata read once and checked, the Jupyter password
hash, the stop workflow run to its end, and uploads with google-cloud-storage (the VM's
credentials, also against STORAGE_EMULATOR_HOST)."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

from kgg.common.vm_runtime import (
    SECRET_NAME,
    CloudError,
    Endpoints,
    Metadata,
    read_secret,
    request,
    start_stop_workflow,
)

RUN_ID = re.compile(r"[A-Za-z0-9._-]+")
EXECUTION_WAIT_SECONDS = 60.0


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
        optional = metadata.optional
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
    deletes this VM. Returns the workflow's result; CloudError says why it did not succeed. One
    attempt per call: kgg/agent/stop.py tries the whole run again."""
    what = "checking" if check else "running"
    try:
        token = metadata.token()
        execution = start_stop_workflow(endpoints, token, workflow, check=check, attempts=1)
        deadline = time.monotonic() + wait
        while execution.get("state") == "ACTIVE" and time.monotonic() < deadline:
            time.sleep(poll)
            answer = request(f"{endpoints.workflows}/{execution['name']}", attempts=1,
                             headers={"Authorization": f"Bearer {token}"}, timeout=30)  # fmt: skip
            execution = json.loads(answer)
    except CloudError as error:
        detail = f" {error.body}" if error.body else ""
        raise CloudError(f"{what} the stop workflow {workflow}: {error}{detail}") from error
    except (ValueError, KeyError, AttributeError) as error:
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
