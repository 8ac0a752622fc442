"""The Vertex AI calls of `kgg submit`, `sweep`, `cancel` and `runs`: create, get, list and cancel
of projects.locations.customJobs and .hyperparameterTuningJobs (aiplatform v1 REST,
https://cloud.google.com/vertex-ai/docs/reference/rest).

Plain REST through google-auth's AuthorizedSession with Application Default Credentials, as
kgg/cli/gce.py calls Compute Engine. The API is regional
(`https://REGION-aiplatform.googleapis.com/`); KGG_VERTEX_ENDPOINT points the calls elsewhere (the
tests' fake on 127.0.0.1, tests/fake_aiplatform.py), with the same credentials.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

from kgg.common.errors import UserError
from kgg.common.terminal import clean_document

ENDPOINT_ENV = "KGG_VERTEX_ENDPOINT"
SCOPE = "https://www.googleapis.com/auth/cloud-platform"
CREDENTIALS_FIX = "gcloud auth application-default login"
TIMEOUT_SECONDS = 60
MAX_PAGES = 50
CUSTOM_JOBS, TUNING_JOBS = "customJobs", "hyperparameterTuningJobs"
# projects/PROJECT/locations/REGION/COLLECTION/ID: what create answers (PROJECT is the number).
JOB_NAME = re.compile(
    r"^projects/(?P<project>[a-z0-9-]+)/locations/(?P<region>[a-z]+-[a-z]+\d+)/"
    r"(?P<collection>customJobs|hyperparameterTuningJobs)/(?P<id>\d+)$"
)


class VertexError(UserError, RuntimeError):
    """A Vertex AI call failed; the message names the call, Vertex's words and the fix."""


def default_endpoint(region: str) -> str:
    return f"https://{region}-aiplatform.googleapis.com/"


class Vertex:
    """The calls themselves, on a requests-style session."""

    def __init__(self, session: Any, endpoint: str) -> None:
        self.session = session
        self.endpoint = endpoint.rstrip("/") + "/"

    @classmethod
    def from_environment(cls, region: str) -> Vertex:
        endpoint = os.environ.get(ENDPOINT_ENV) or default_endpoint(region)
        import google.auth
        from google.auth.exceptions import DefaultCredentialsError
        from google.auth.transport.requests import AuthorizedSession

        try:
            credentials, _ = google.auth.default(scopes=[SCOPE])
        except DefaultCredentialsError as error:
            raise VertexError(
                f"no Google credentials for Vertex AI ({error}); run `{CREDENTIALS_FIX}`"
            ) from None
        return cls(AuthorizedSession(credentials), endpoint)

    def create(self, parent: str, collection: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", f"{parent}/{collection}", body=body)

    def get(self, name: str) -> dict[str, Any]:
        return self._call("GET", name)

    def cancel(self, name: str) -> None:
        self._call("POST", f"{name}:cancel")

    def list(self, parent: str, collection: str, filter_text: str) -> Iterator[dict[str, Any]]:
        token = None
        for _ in range(MAX_PAGES):
            params = {"filter": filter_text, **({"pageToken": token} if token else {})}
            page = self._call("GET", f"{parent}/{collection}", params=params)
            yield from page.get(collection) or []
            token = page.get("nextPageToken")
            if not token:
                return

    def _call(
        self, method: str, path: str, body: Any = None, params: dict[str, str] | None = None
    ) -> dict[str, Any]:
        import requests

        url = f"{self.endpoint}v1/{path}"
        try:
            response = self.session.request(
                method, url, json=body, params=params, timeout=TIMEOUT_SECONDS
            )
        except requests.RequestException as error:
            raise VertexError(f"{method} {url} failed: {error}") from None
        if response.status_code >= 400:
            raise VertexError(_http_error(method, path, response))
        answer = response.json() if response.content else {}
        return clean_document(answer) if isinstance(answer, dict) else {}


def _http_error(method: str, path: str, response: Any) -> str:
    """One line: the call, Vertex's own message, and the fix for what a user can fix."""
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:300]
    line = f"{method} {path}: HTTP {response.status_code}: {' '.join(str(message).split())}"
    line = clean_document(line)
    if response.status_code == 401:
        return f"{line}; refresh your credentials: `{CREDENTIALS_FIX}`"
    if response.status_code == 403:
        return (
            f"{line}; your account needs Vertex AI's aiplatform.customJobs.* / "
            "hyperparameterTuningJobs.* permissions (roles/aiplatform.user), and the project "
            "the API enabled: `gcloud services enable aiplatform.googleapis.com`"
        )
    if "act as service_account" in line:
        return (
            f"{line}; your account needs roles/iam.serviceAccountUser on the jobs' account "
            '(README, "Vertex AI"), or pass --service-account with one you may act as'
        )
    return line
