"""What the agent asks the cloud beyond kgg/common/vm_runtime.py (the VM's one stdlib client,
the startup script's too): the instance's metadata read once and checked, the Jupyter password
hash, the stop workflow run to its end, and uploads with google-cloud-storage (the VM's
credentials, also against STORAGE_EMULATOR_HOST)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from kgg.common.contract import (
    BUCKET_KEY,
    GROUP_NAME_KEY,
    GROUP_REGION_KEY,
    NOTIFY_SECRET_KEY,
    PASSWORD_SECRET_KEY,
    RUN_ID_KEY,
    STOP_WORKFLOW_KEY,
    WORKSPACE_PREFIX_KEY,
    ContractError,
    check_run_id,
    check_secret_name,
)
from kgg.common.vm_runtime import (
    ATTRIBUTES,
    CloudError,
    Endpoints,
    Metadata,
    read_secret,
    request,
    start_stop_workflow,
)

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
        try:
            run_id = check_run_id(metadata.attribute(RUN_ID_KEY))
            secret = check_secret_name(metadata.attribute(PASSWORD_SECRET_KEY))
        except ContractError as error:
            raise CloudError(str(error)) from error
        return cls(
            bucket=metadata.attribute(BUCKET_KEY),
            run_id=run_id,
            password_secret=secret,
            external_ip=optional("instance/network-interfaces/0/access-configs/0/external-ip"),
            name=optional("instance/name"),
            zone=optional("instance/zone").rsplit("/", 1)[-1],
            group=optional(f"{ATTRIBUTES}{GROUP_NAME_KEY}"),
            group_region=optional(f"{ATTRIBUTES}{GROUP_REGION_KEY}"),
            project=optional("project/project-id"),
            workspace_prefix=optional(f"{ATTRIBUTES}{WORKSPACE_PREFIX_KEY}"),
            notify_secret=optional(f"{ATTRIBUTES}{NOTIFY_SECRET_KEY}"),
            stop_workflow=optional(f"{ATTRIBUTES}{STOP_WORKFLOW_KEY}"),
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
