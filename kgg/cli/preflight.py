"""What `kgg init` checks before it writes a stack: credentials, the APIs the stack uses, and the
GPU quota. Each problem is one line with its fix.

`missing_apis` and `quota_problems` are pure functions of the APIs' answers (Service Usage
`services.list`, Compute `projects.get` and `regions.get`, shapes as in their discovery
documents); `Preflight` makes those calls through google-auth's AuthorizedSession with
Application Default Credentials. KGG_COMPUTE_ENDPOINT and KGG_SERVICEUSAGE_ENDPOINT point the
calls elsewhere (the tests' fake on 127.0.0.1).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from kgg.cli.gce import CREDENTIALS_FIX, SCOPE
from kgg.cli.gce import DEFAULT_ENDPOINT as COMPUTE_ENDPOINT
from kgg.cli.gce import ENDPOINT_ENV as COMPUTE_ENDPOINT_ENV
from kgg.common.errors import UserError
from kgg.common.terminal import clean_document

SERVICEUSAGE_ENDPOINT_ENV = "KGG_SERVICEUSAGE_ENDPOINT"
SERVICEUSAGE_ENDPOINT = "https://serviceusage.googleapis.com/"
TIMEOUT_SECONDS = 30
MAX_PAGES = 10
# The APIs the stack's resources use: README "Prerequisites" enables exactly these.
REQUIRED_APIS = (
    "compute.googleapis.com",
    "storage.googleapis.com",
    "iam.googleapis.com",
    "secretmanager.googleapis.com",
    "workflows.googleapis.com",
)
PROJECT_GPU_METRIC = "GPUS_ALL_REGIONS"
# Compute Engine's per-region quota metric of each GPU (the Quota.metric enum of compute.v1's
# discovery document). The H100's on-demand quota has no metric there: only its spot one does.
REGION_GPU_METRICS = {
    "nvidia-tesla-t4": "NVIDIA_T4_GPUS",
    "nvidia-tesla-p4": "NVIDIA_P4_GPUS",
    "nvidia-tesla-p100": "NVIDIA_P100_GPUS",
    "nvidia-tesla-v100": "NVIDIA_V100_GPUS",
    "nvidia-l4": "NVIDIA_L4_GPUS",
    "nvidia-tesla-a100": "NVIDIA_A100_GPUS",
    "nvidia-a100-80gb": "NVIDIA_A100_80GB_GPUS",
}
PREEMPTIBLE_GPU_METRICS = {
    **{gpu: f"PREEMPTIBLE_{metric}" for gpu, metric in REGION_GPU_METRICS.items()},
    "nvidia-h100-80gb": "PREEMPTIBLE_NVIDIA_H100_GPUS",
}


class PreflightError(UserError):
    """A check could not run (no credentials, a refused call); the message says what to do."""


def quotas_page(project: str) -> str:
    return f"https://console.cloud.google.com/iam-admin/quotas?project={project}"


def missing_apis(enabled: Iterable[Mapping[str, Any]], project: str) -> list[str]:
    """One line naming the REQUIRED_APIS that `services.list?filter=state:ENABLED` did not list
    (its `services`, each named `projects/NUMBER/services/NAME`), with the command that enables
    them; [] when all are enabled."""
    names = {
        str(service.get("name", "")).rsplit("/", 1)[-1]
        for service in enabled
        if service.get("state", "ENABLED") == "ENABLED"
    }
    missing = [api for api in REQUIRED_APIS if api not in names]
    if not missing:
        return []
    return [
        f"API{'s' if len(missing) > 1 else ''} not enabled in project {project}: "
        f"{', '.join(missing)}; enable with `gcloud services enable {' '.join(missing)} "
        f"--project {project}`"
    ]


def _limits(quotas: Iterable[Mapping[str, Any]]) -> dict[str, tuple[float, float]]:
    """metric -> (limit, usage), from a Project's or Region's `quotas`."""
    return {
        str(quota.get("metric")): (float(quota.get("limit") or 0), float(quota.get("usage") or 0))
        for quota in quotas
    }


def quota_problems(
    project_quotas: Iterable[Mapping[str, Any]],
    region_quotas: Iterable[Mapping[str, Any]],
    *,
    gpu_type: str,
    gpus: int,
    spot: bool,
    project: str,
    region: str,
) -> list[str]:
    """A line for each quota whose limit is under the `gpus` the stack asks for (usage is not
    counted: the stack's own running VM is part of it). A spot VM draws on the preemptible
    quota, or on the ordinary one when the project has no preemptible quota
    (https://cloud.google.com/compute/resource-usage#preemptible), so either suffices."""
    page = quotas_page(project)
    problems = []
    limit, _ = _limits(project_quotas).get(PROJECT_GPU_METRIC, (0.0, 0.0))
    if limit < gpus:
        problems.append(
            f"quota {PROJECT_GPU_METRIC} of project {project} is {limit:g}, the stack needs "
            f"{gpus}: request at least {gpus} for compute.googleapis.com/gpus_all_regions at "
            f"{page} (approval takes minutes to days)"
        )
    regional = _limits(region_quotas)
    candidates = [REGION_GPU_METRICS.get(gpu_type)]
    if spot:
        candidates.insert(0, PREEMPTIBLE_GPU_METRICS.get(gpu_type))
    metrics = [metric for metric in candidates if metric]
    if not metrics:
        return problems  # no metric the Compute API reports: GCE's own error will say
    best = max(regional.get(metric, (0.0, 0.0))[0] for metric in metrics)
    if best < gpus:
        named = " or ".join(metrics)
        problems.append(
            f"quota {named} in region {region} is {best:g}, the stack needs {gpus}: request at "
            f"least {gpus} for compute.googleapis.com/{metrics[0].lower()} in {region} at {page} "
            f"(or pick a region with quota: --region)"
        )
    return problems


class Preflight:
    """The calls, on a requests-style session."""

    def __init__(
        self,
        session: Any,
        compute_endpoint: str = COMPUTE_ENDPOINT,
        serviceusage_endpoint: str = SERVICEUSAGE_ENDPOINT,
    ) -> None:
        self.session = session
        self.compute = compute_endpoint.rstrip("/") + "/"
        self.serviceusage = serviceusage_endpoint.rstrip("/") + "/"

    @classmethod
    def from_environment(cls, project: str) -> Preflight:
        """With Application Default Credentials; PreflightError (one line) when there are none.
        A user's credentials without a quota project bill the calls to `project`: Service Usage
        refuses user credentials that name none (a service account bills its own project)."""
        import google.auth
        from google.auth.exceptions import DefaultCredentialsError
        from google.auth.transport.requests import AuthorizedSession
        from google.oauth2.credentials import Credentials as UserCredentials

        try:
            credentials, _ = google.auth.default(scopes=[SCOPE])
        except DefaultCredentialsError:
            raise PreflightError(
                "no Google credentials (Application Default Credentials) on this machine; "
                f"run `{CREDENTIALS_FIX}`"
            ) from None
        if isinstance(credentials, UserCredentials) and credentials.quota_project_id is None:
            credentials = credentials.with_quota_project(project)
        return cls(
            AuthorizedSession(credentials),
            os.environ.get(COMPUTE_ENDPOINT_ENV) or COMPUTE_ENDPOINT,
            os.environ.get(SERVICEUSAGE_ENDPOINT_ENV) or SERVICEUSAGE_ENDPOINT,
        )

    def enabled_services(self, project: str) -> list[dict[str, Any]]:
        services: list[dict[str, Any]] = []
        params: dict[str, Any] = {"filter": "state:ENABLED", "pageSize": 200}
        for _ in range(MAX_PAGES):
            page = self._get(f"{self.serviceusage}v1/projects/{project}/services", params)
            services += page.get("services") or []
            token = page.get("nextPageToken")
            if not token:
                break
            params = {**params, "pageToken": token}
        return services

    def project_quotas(self, project: str) -> list[dict[str, Any]]:
        return self._get(f"{self.compute}projects/{project}").get("quotas") or []

    def region_quotas(self, project: str, region: str) -> list[dict[str, Any]]:
        body = self._get(f"{self.compute}projects/{project}/regions/{region}")
        return body.get("quotas") or []

    def _get(self, url: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        import requests
        from google.auth.exceptions import RefreshError, TransportError

        try:
            response = self.session.request("GET", url, params=params, timeout=TIMEOUT_SECONDS)
        except RefreshError:
            raise PreflightError(
                f"the Google credentials on this machine are expired or revoked; run "
                f"`{CREDENTIALS_FIX}`"
            ) from None
        except (requests.RequestException, TransportError) as error:
            raise PreflightError(f"GET {url} failed: {error}") from None
        if response.status_code >= 400:
            raise PreflightError(_http_error(url, response))
        body = response.json() if response.content else {}
        return clean_document(body) if isinstance(body, dict) else {}


def _http_error(url: str, response: Any) -> str:
    """One line: the call, Google's message, and the fix for the errors a user can fix."""
    try:
        message = str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        message = response.text[:200]
    message = " ".join(clean_document(message).split())
    line = f"GET {url.split('?', 1)[0]}: HTTP {response.status_code}: {message}"
    if response.status_code == 401:
        return f"{line}; run `{CREDENTIALS_FIX}`"
    if response.status_code == 403:
        return (
            f"{line}; your account needs to read the project (e.g. roles/viewer), with "
            f"credentials from `{CREDENTIALS_FIX}`"
        )
    if response.status_code == 404:
        return f"{line}; is the project id (--project) and region (--region) right?"
    return line
