"""The Compute Engine calls of the laptop commands: the VM's group (get, resize), its VMs and
their errors, its template, and the operations a resize starts.

Plain REST calls (https://cloud.google.com/compute/docs/reference/rest/v1) through google-auth's
AuthorizedSession with Application Default Credentials, the same credentials the storage client
uses. KGG_COMPUTE_ENDPOINT points the calls elsewhere (the tests' IAM-enforcing fake on 127.0.0.1),
with the same credentials.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from kgg.common.errors import UserError
from kgg.common.terminal import clean_document

ENDPOINT_ENV = "KGG_COMPUTE_ENDPOINT"
DEFAULT_ENDPOINT = "https://compute.googleapis.com/compute/v1/"
SCOPE = "https://www.googleapis.com/auth/cloud-platform"
CREDENTIALS_FIX = "gcloud auth application-default login"
TIMEOUT_SECONDS = 60
# operations.wait returns after at most 2 minutes even when the operation is not done; a resize
# is DONE once scheduled, so a few waits are plenty.
# https://cloud.google.com/compute/docs/reference/rest/v1/regionOperations/wait
MAX_WAITS = 5
MAX_PAGES = 20
# projects/PROJECT/regions/REGION/instanceGroupManagers/NAME, as `pulumi stack output
# instanceGroup` prints it and as IAM conditions name the group.
GROUP_PATH = re.compile(
    r"projects/(?P<project>[a-z][a-z0-9.:-]{1,62})/regions/(?P<region>[a-z]+-[a-z]+[0-9]+)"
    r"/instanceGroupManagers/(?P<name>[a-z]([-a-z0-9]{0,61}[a-z0-9])?)"
)
TEMPLATE_PATH = re.compile(
    r"projects/[a-z][a-z0-9.:-]{1,62}/(global|regions/[a-z]+-[a-z]+[0-9]+)/instanceTemplates/"
    r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?"
)


class GceError(UserError, RuntimeError):
    """A Compute Engine call failed; the message names the call and what to do."""


@dataclass(frozen=True)
class GroupRef:
    project: str
    region: str
    name: str

    @classmethod
    def parse(cls, path: str) -> GroupRef:
        match = GROUP_PATH.fullmatch(path.strip().strip("/"))
        if not match:
            raise GceError(
                f"instance group {path!r} is not a group path; expected "
                "projects/PROJECT/regions/REGION/instanceGroupManagers/NAME "
                "(`pulumi stack output instanceGroup`)"
            )
        return cls(match["project"], match["region"], match["name"])

    @property
    def path(self) -> str:
        return f"projects/{self.project}/regions/{self.region}/instanceGroupManagers/{self.name}"


class Compute:
    """The calls themselves, on a requests-style session."""

    def __init__(self, session: Any, endpoint: str = DEFAULT_ENDPOINT) -> None:
        self.session = session
        self.endpoint = endpoint.rstrip("/") + "/"

    @classmethod
    def from_environment(cls) -> Compute:
        endpoint = os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT
        import google.auth
        from google.auth.exceptions import DefaultCredentialsError
        from google.auth.transport.requests import AuthorizedSession

        try:
            credentials, _ = google.auth.default(scopes=[SCOPE])
        except DefaultCredentialsError as error:
            raise GceError(
                f"no Google credentials for Compute Engine ({error}); run `{CREDENTIALS_FIX}`"
            ) from None
        return cls(AuthorizedSession(credentials), endpoint)

    def get_group(self, group: GroupRef) -> dict[str, Any]:
        return self._call("GET", group.path)

    def list_managed_instances(self, group: GroupRef) -> list[dict[str, Any]]:
        return self._pages("POST", f"{group.path}/listManagedInstances", "managedInstances")

    def list_errors(self, group: GroupRef) -> list[dict[str, Any]]:
        return self._pages("GET", f"{group.path}/listErrors", "items")

    def list_per_instance_configs(self, group: GroupRef) -> list[dict[str, Any]]:
        return self._pages("POST", f"{group.path}/listPerInstanceConfigs", "items")

    def labelled_instances(self, project: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        """Every VM of the project with these labels, in any zone (instances.aggregatedList)."""
        match = " ".join(f"(labels.{key} = {value})" for key, value in sorted(labels.items()))
        body = self._call("GET", f"projects/{project}/aggregated/instances",
                          params={"filter": match})  # fmt: skip
        return [
            vm
            for scoped in (body.get("items") or {}).values()
            for vm in (scoped.get("instances") or [])
        ]

    def delete_instance(self, project: str, zone: str, name: str) -> dict[str, Any]:
        return self._call("DELETE", f"projects/{project}/zones/{zone}/instances/{name}")

    def get_template(self, url: str) -> dict[str, Any]:
        """The template a group names (a full URL in its `instanceTemplate`)."""
        path = url.split("/compute/v1/", 1)[-1].split("?", 1)[0]
        if not TEMPLATE_PATH.fullmatch(path):
            raise GceError(f"the group names an unexpected template {url!r}")
        return self._call("GET", path)

    def guest_attributes(
        self, project: str, zone: str, name: str, path: str
    ) -> list[dict[str, Any]]:
        """The VM's guest attributes under `path` (`hostkeys/`): [] while none is written."""
        body = self._call(
            "GET",
            f"projects/{project}/zones/{zone}/instances/{name}/getGuestAttributes",
            params={"queryPath": path},
            missing_ok=True,
        )
        return (body.get("queryValue") or {}).get("items") or []

    def resize(self, group: GroupRef, size: int) -> dict[str, Any]:
        """Sets the group's target size and waits for the operation: DONE means the group has
        scheduled the VM's creation or deletion, not that it happened."""
        operation = self._call("POST", f"{group.path}/resize", params={"size": size})
        for _ in range(MAX_WAITS):
            if operation.get("status") == "DONE":
                break
            operation = self._call(
                "POST",
                f"projects/{group.project}/regions/{group.region}/operations/"
                f"{operation.get('name')}/wait",
            )
        errors = ((operation.get("error") or {}).get("errors")) or []
        if errors:
            first = errors[0]
            raise GceError(
                f"resizing {group.name} to {size} failed: {first.get('code')}: "
                f"{first.get('message')}"
            )
        return operation

    def _pages(self, method: str, path: str, key: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        token = None
        for _ in range(MAX_PAGES):
            page = self._call(method, path, params={"pageToken": token} if token else None)
            items += page.get(key) or []
            token = page.get("nextPageToken")
            if not token:
                break
        return items

    def _call(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        missing_ok: bool = False,
    ) -> dict[str, Any]:
        """The answer's JSON; {} for a 404 when `missing_ok` (GCE's answer for nothing there)."""
        import requests

        url = self.endpoint + path
        try:
            response = self.session.request(method, url, params=params, timeout=TIMEOUT_SECONDS)
        except requests.RequestException as error:
            raise GceError(f"{method} {url} failed: {error}") from None
        if response.status_code == 404 and missing_ok:
            return {}
        if response.status_code >= 400:
            raise GceError(_http_error(method, path, response))
        body = response.json() if response.content else {}
        return clean_document(body) if isinstance(body, dict) else {}


def _http_error(method: str, path: str, response: Any) -> str:
    """One line: the call, GCE's own message, and the fix for the errors a user can fix."""
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:200]
    line = f"{method} {path}: HTTP {response.status_code}: {clean_document(str(message))}"
    if response.status_code in (401, 403):
        return (
            f"{line}; your account needs compute.instanceGroupManagers.get/update on the project "
            f"(e.g. roles/compute.instanceAdmin.v1), with credentials from `{CREDENTIALS_FIX}`"
        )
    if response.status_code == 404:
        return f"{line}; does the stack exist (`pulumi up`), and is this its group?"
    return line


def zone_of(url: str) -> str:
    """`.../zones/us-central1-b/instances/x` -> `us-central1-b` ("" when there is none)."""
    match = re.search(r"/zones/([a-z0-9-]+)/", url or "")
    return match.group(1) if match else ""


def last_segment(url: str) -> str:
    return (url or "").rstrip("/").rsplit("/", 1)[-1]
