"""A fake of the three calls `kgg init` checks a project with, on 127.0.0.1: Service Usage's
`services.list` and Compute Engine's `projects.get` and `regions.get`.

Every answer is built to the shapes of Google's discovery documents (serviceusage.v1
ListServicesResponse, compute.v1 Project and Region) and checked against them before it is sent.
Calls are checked against IAM as the APIs do (the caller by its bearer token, the permission the
API reference documents for the method, the grants of tests/iam.py), Compute's calls answer
Compute's own SERVICE_DISABLED error while the Compute API is not enabled, and `filter` takes only
the two values the document allows.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from kgg.cli.preflight import REQUIRED_APIS
from tests import discovery
from tests.fake_cloud import compute_denial, google_denial
from tests.iam import PROJECT, PROJECT_NUMBER, REGION, Stack, stack
from tests.loopback import serving

COMPUTE = "/compute/v1/"
SERVICES = f"/v1/projects/{PROJECT}/services"
# A new project's GPU quota is 0 (README Prerequisites); these tests start from an approved one.
GRANTED = {"GPUS_ALL_REGIONS": 1}
REGION_GRANTED = {"NVIDIA_T4_GPUS": 1, "NVIDIA_L4_GPUS": 1, "PREEMPTIBLE_NVIDIA_T4_GPUS": 0}


@dataclass
class FakeProjectApis:
    enabled: set[str] = field(
        default_factory=lambda: {*REQUIRED_APIS, "serviceusage.googleapis.com"}
    )
    project_quotas: dict[str, float] = field(default_factory=lambda: dict(GRANTED))
    region_quotas: dict[str, float] = field(default_factory=lambda: dict(REGION_GRANTED))
    stack: Stack = field(default_factory=lambda: stack("kgg-test-bucket"))
    url: str = ""
    # `METHOD path?query`, in order.
    calls: list[str] = field(default_factory=list)

    def answer(self, method: str, raw: str, authorization: str, _body: bytes) -> tuple[int, Any]:
        split = urlsplit(raw)
        query = {key: values[0] for key, values in parse_qs(split.query).items()}
        self.calls.append(f"{method} {raw}")
        member = self.stack.authority.member(authorization.removeprefix("Bearer "))
        resource = f"projects/{PROJECT}"
        if method == "GET" and split.path == SERVICES:
            if member is None or not self.stack.authority.allows(
                member, "serviceusage.services.list", resource
            ):
                return google_denial(member, "serviceusage.services.list", resource)
            return self._services(query)
        if method == "GET" and split.path.startswith(COMPUTE):
            path = split.path.removeprefix(COMPUTE)
            permission = "compute.regions.get" if "/regions/" in path else "compute.projects.get"
            if member is None or not self.stack.authority.allows(member, permission, resource):
                return compute_denial(member, permission, resource)
            if "compute.googleapis.com" not in self.enabled:
                return _service_disabled()
            if path == resource:
                return 200, self._shaped("Project", self._project())
            if path == f"{resource}/regions/{REGION}":
                return 200, self._shaped("Region", self._region())
        message = f"The resource '{split.path}' was not found"
        return 404, {"error": {"code": 404, "message": message, "errors": []}}

    def _services(self, query: dict[str, str]) -> tuple[int, Any]:
        state = {"state:ENABLED": "ENABLED", "state:DISABLED": "DISABLED"}.get(
            query.get("filter", "")
        )
        if "filter" in query and state is None:
            message = f"Invalid filter {query['filter']!r}; use state:ENABLED or state:DISABLED"
            return 400, {"error": {"code": 400, "message": message, "status": "INVALID_ARGUMENT"}}
        if state != "ENABLED":
            raise AssertionError(f"the fake lists enabled services only, asked {query}")
        services = [
            {"name": f"projects/{PROJECT_NUMBER}/services/{name}",
             "parent": f"projects/{PROJECT_NUMBER}", "state": "ENABLED",
             "config": {"name": name, "title": name.split(".")[0]}}
            for name in sorted(self.enabled)
        ]  # fmt: skip
        return 200, self._shaped("ListServicesResponse", {"services": services}, "serviceusage.v1")

    def _project(self) -> dict[str, Any]:
        return {
            "kind": "compute#project",
            "id": PROJECT_NUMBER,
            "name": PROJECT,
            "selfLink": f"https://www.googleapis.com/compute/v1/projects/{PROJECT}",
            "quotas": _quotas({"CPUS_ALL_REGIONS": 32, **self.project_quotas}),
        }

    def _region(self) -> dict[str, Any]:
        return {
            "kind": "compute#region",
            "id": "1000",
            "name": REGION,
            "status": "UP",
            "selfLink": f"https://www.googleapis.com/compute/v1/projects/{PROJECT}/regions/{REGION}",
            "quotas": _quotas({"CPUS": 24, **self.region_quotas}),
        }

    @staticmethod
    def _shaped(schema: str, body: dict[str, Any], api: str = "compute.v1") -> dict[str, Any]:
        violations = discovery.load(api).validate(schema, body, output=True)
        assert not violations, [str(violation) for violation in violations]
        return body


def _quotas(limits: dict[str, float]) -> list[dict[str, Any]]:
    return [{"metric": metric, "limit": limit, "usage": 0.0} for metric, limit in limits.items()]


def _service_disabled() -> tuple[int, dict[str, Any]]:
    """Compute Engine's answer while its API is off in the project."""
    message = (
        f"Compute Engine API has not been used in project {PROJECT_NUMBER} before or it is "
        "disabled. Enable it by visiting https://console.developers.google.com/apis/api/"
        f"compute.googleapis.com/overview?project={PROJECT_NUMBER} then retry."
    )
    error = {"message": message, "domain": "usageLimits", "reason": "accessNotConfigured"}
    return 403, {"error": {"code": 403, "message": message, "errors": [error]}}


@contextmanager
def running_fake(fake: FakeProjectApis | None = None) -> Iterator[FakeProjectApis]:
    """`fake` served until the block ends; `.url` is the root (`http://127.0.0.1:PORT/`)."""
    fake = fake or FakeProjectApis()
    with serving(fake.answer) as url:
        fake.url = url
        yield fake
