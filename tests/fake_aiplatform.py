"""A loopback fake of the Vertex AI (aiplatform v1) REST API: the calls `kgg submit`, `sweep`,
`cancel`, `runs` and `status` make (projects.locations.customJobs and .hyperparameterTuningJobs
create, get, list, cancel).

What it refuses comes from Google's own description of the API, the discovery document
`aiplatform.v1.json` that google-api-python-client ships (tests/discovery.py reads it): unknown
fields, output-only fields, wrong JSON types, bad enum values and missing required fields, each
with the API's error shape (google.rpc.Status JSON: 400 INVALID_ARGUMENT, a message naming the
field path, a google.rpc.BadRequest with the field violations). A body that parses is then
checked as Vertex checks a job (tests/vertex_rules.py: only rules the document's descriptions
state, plus the accelerator pairing whose error text users have reported), with Vertex's own
"List of found errors" text. What it answers is shaped from the same schemas (canonical proto3
JSON: int64 as strings; names with the project NUMBER, as Vertex returns them) and checked
against the document before it leaves.

Callers are known by their bearer token, as Google's APIs know them, and every call is checked
against an `Authority` (tests/iam.py's `access.Authority` fits: the stack's declared grants), with
the permission the Vertex AI access-control reference gives per method
(`aiplatform.customJobs.create`, `.get`, `.list`, `.cancel`, the same for
`hyperparameterTuningJobs`) on the method's resource, and `iam.serviceAccounts.actAs` on the
job's service account for a create ("Users submitting jobs must have act-as permission on this
run-as account", the document says; Vertex answers 400 "You do not have permission to act as
service_account: ..."). Order, as Google's front and the service do it: 401, parsing, 403, then
the job's checks.

Time moves only when a test moves it: `set_state` (queued -> pending -> running -> succeeded,
failed, cancelled, expired, with the transitions the document's state descriptions allow),
`start_trial` and `end_trial` (a tuning job's trials with their parameters, drawn from the study
spec or given, and their final measurement), `settle_cancel`. The wording of a few refusals the
document does not describe (cancelling a finished job, a filter the fake does not parse) is the
fake's; their status codes are the API's.
"""

from __future__ import annotations

import base64
import copy
import json
import math
import random
import re
import threading
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from tests import discovery, loopback
from tests.discovery import Violation
from tests.vertex_rules import LOG_SCALES, document, service_problems

SERVICE = "aiplatform.googleapis.com"


@dataclass(frozen=True)
class JobCollection:
    """One job collection of the API: its path segment, schema, the create request's body field
    (what the API's field paths start with), and the permission noun."""

    segment: str
    schema: str
    body_field: str
    spec_field: str  # where the job's CustomJobSpec sits

    @property
    def method_prefix(self) -> str:
        return f"projects.locations.{self.segment}"


CUSTOM_JOBS = JobCollection("customJobs", "CustomJob", "custom_job", "jobSpec")
TUNING_JOBS = JobCollection(
    "hyperparameterTuningJobs",
    "HyperparameterTuningJob",
    "hyperparameter_tuning_job",
    "trialJobSpec",
)
COLLECTIONS = {c.segment: c for c in (CUSTOM_JOBS, TUNING_JOBS)}

# JobState, from the document's enum; the transitions its descriptions allow ("From this state
# the job may only go to either SUCCEEDED, FAILED or CANCELLED", ...).
QUEUED, PENDING, RUNNING = "JOB_STATE_QUEUED", "JOB_STATE_PENDING", "JOB_STATE_RUNNING"
SUCCEEDED, FAILED = "JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED"
CANCELLING, CANCELLED = "JOB_STATE_CANCELLING", "JOB_STATE_CANCELLED"
EXPIRED, PARTIALLY_SUCCEEDED = "JOB_STATE_EXPIRED", "JOB_STATE_PARTIALLY_SUCCEEDED"
FINAL_STATES = frozenset({SUCCEEDED, FAILED, CANCELLED, EXPIRED, PARTIALLY_SUCCEEDED})
TRANSITIONS: Mapping[str, frozenset[str]] = {
    QUEUED: frozenset({PENDING, RUNNING, FAILED, CANCELLING, EXPIRED}),
    PENDING: frozenset({RUNNING, FAILED, CANCELLING, EXPIRED}),
    RUNNING: frozenset({SUCCEEDED, FAILED, CANCELLING, PARTIALLY_SUCCEEDED}),
    CANCELLING: frozenset({SUCCEEDED, FAILED, CANCELLED}),
}
# Trial states (the Trial schema's enum).
TRIAL_ACTIVE, TRIAL_SUCCEEDED, TRIAL_INFEASIBLE = "ACTIVE", "SUCCEEDED", "INFEASIBLE"
# google.rpc.Code numbers of the errors a job carries.
CODE_CANCELLED, CODE_INTERNAL = 1, 13

# The HTTP status and google.rpc.Code name of each error the fake answers.
HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "UNIMPLEMENTED": 501,
}


class Authority(Protocol):
    """Who a bearer token belongs to, and whether they may use a permission on a resource (full
    IAM names: `projects/P/locations/L/customJobs/ID`). kgg.infra.access.Authority fits."""

    def member(self, token: str | None) -> str | None: ...

    def allows(self, member: str, permission: str, resource: str) -> bool: ...


@dataclass
class StaticAuthority:
    """An Authority from written grants, for tests that need no declared stack: `grants` maps a
    member to (permission, resource prefix) pairs; a prefix covers itself and what is under it."""

    grants: Mapping[str, Collection[tuple[str, str]]]
    tokens: dict[str, str] = field(default_factory=dict)

    def issue(self, member: str) -> str:
        token = f"ya29.vertex-{len(self.tokens)}-{re.sub(r'[^a-z0-9]+', '-', member.lower())}"
        self.tokens[token] = member
        return token

    def member(self, token: str | None) -> str | None:
        return self.tokens.get(token or "")

    def allows(self, member: str, permission: str, resource: str) -> bool:
        return any(
            granted == permission and (resource == scope or resource.startswith(scope + "/"))
            for granted, scope in self.grants.get(member, ())
        )


def permission(collection: JobCollection, verb: str) -> str:
    return f"aiplatform.{collection.segment}.{verb}"


def validate(schema_name: str, body: Any) -> list[Violation]:
    """Everything the API would refuse in `body` as a create request's `schema_name` message
    ("CustomJob", "HyperparameterTuningJob"): the document's checks, then the job's."""
    found = document().validate(schema_name, body)
    if found:
        return found
    return service_problems(document().schema_id(schema_name), body)


# --- errors in the API's shape -----------------------------------------------------------------
def error(status: str, message: str, details: list[dict] | None = None) -> tuple[int, dict]:
    code = HTTP_STATUS[status]
    body: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        body["details"] = details
    return code, {"error": body}


def parsing_error(violations: list[Violation], root: str) -> tuple[int, dict]:
    """The transcoder's 400 for a body that does not parse (every problem, one per line)."""
    lines = [_parsing_line(v, root) for v in violations]
    fields = [
        {"field": _parsing_field(v, root), "description": line}
        for v, line in zip(violations, lines, strict=True)
    ]
    return error("INVALID_ARGUMENT", "\n".join(lines), [_bad_request(fields)])


def _parsing_field(violation: Violation, root: str) -> str:
    if violation.kind == discovery.UNKNOWN or isinstance(violation.value, list):
        parent = violation.path if violation.kind == discovery.UNKNOWN else violation.path[:-1]
        return discovery.render_path(parent, snake=True, root=root)
    return violation.field(root)


def _parsing_line(violation: Violation, root: str) -> str:
    where = _parsing_field(violation, root)
    if violation.kind == discovery.UNKNOWN:
        name = violation.value
        return (
            f"Invalid JSON payload received. Unknown name \"{name}\" at '{where}': Cannot find "
            "field."
        )
    if isinstance(violation.value, list):
        name = violation.path[-1]
        return (
            f"Invalid JSON payload received. Unknown name \"{name}\" at '{where}': Proto field is "
            "not repeating, cannot start list."
        )
    if isinstance(violation.value, dict):
        return (
            f"Invalid value at '{where}' ({violation.proto_type}), Starting an object on a "
            "scalar field"
        )
    return f"Invalid value at '{where}' ({violation.proto_type}), {json.dumps(violation.value)}"


def job_error(violations: list[Violation]) -> tuple[int, dict]:
    """Vertex's own 400 for a job that parses but does not hold: "List of found errors"."""
    texts = {
        discovery.REQUIRED: "Required field is not set.",
        discovery.READ_ONLY: "Output only field must not be set.",
    }
    items = []
    fields = []
    for number, violation in enumerate(violations, start=1):
        text = texts.get(violation.kind, violation.message)
        items.append(f"{number}.Field: {violation.field()}; Message: {text}")
        fields.append({"field": violation.field(), "description": text})
    message = "List of found errors:\t" + "\t".join(items) + "\t"
    return error("INVALID_ARGUMENT", message, [_bad_request(fields)])


def _bad_request(fields: list[dict[str, str]]) -> dict[str, Any]:
    return {"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": fields}


def denial(member: str | None, needed: str, resource: str) -> tuple[int, dict]:
    """401 without a known token; 403 with Google's ErrorInfo for a missing permission."""
    if member is None:
        return error(
            "UNAUTHENTICATED",
            "Request is missing required authentication credential. Expected OAuth 2 access "
            "token, login cookie or other valid authentication credential.",
        )
    info = {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "IAM_PERMISSION_DENIED",
        "domain": SERVICE,
        "metadata": {"permission": needed, "resource": resource},
    }
    return error(
        "PERMISSION_DENIED",
        f"Permission '{needed}' denied on resource '//{SERVICE}/{resource}' (or it may not exist).",
        [info],
    )


# --- the fake ------------------------------------------------------------------------------------
@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    member: str | None


NAME = re.compile(
    r"^projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/(?P<collection>[A-Za-z]+)"
    r"(?:/(?P<id>[^/:]+))?(?::(?P<verb>[a-z]+))?$"
)
LOCATION = re.compile(r"^[a-z]+-[a-z]+\d+$")


@dataclass
class FakeVertex:
    """The API's state and its answers (`answer`); `running_fake` serves it on 127.0.0.1."""

    authority: Authority
    project: str = "kgg-demo-project"
    project_number: str = "123456789012"
    # The service accounts that exist (None: any); a create naming another is refused as one the
    # caller may not act as ("(or it may not exist)").
    service_accounts: Collection[str] | None = None
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    page_size: int = 100
    url: str = ""
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.RLock()
        self._next_id = 0

    # --- serving -------------------------------------------------------------------------------
    def answer(
        self, method: str, raw_path: str, authorization: str = "", body: bytes = b""
    ) -> tuple[int, dict[str, Any]]:
        with self._lock:
            split = urlsplit(raw_path)
            query = parse_qs(split.query, keep_blank_values=True)
            token = (
                authorization.removeprefix("Bearer ") if authorization.startswith("Bearer ") else ""
            )
            member = self.authority.member(token)
            parsed_body: Any = None
            if body:
                try:
                    parsed_body = json.loads(body)
                except ValueError:
                    parsed_body = _Unparsable()
            path = unquote(split.path)
            self.requests.append(Request(method, path, query, parsed_body, member))
            return self._route(method, path, query, parsed_body, member)

    def _route(
        self, method: str, path: str, query: dict[str, list[str]], body: Any, member: str | None
    ) -> tuple[int, dict[str, Any]]:
        match = NAME.match(path.removeprefix("/v1/")) if path.startswith("/v1/") else None
        collection = COLLECTIONS.get(match["collection"]) if match else None
        if match is None or collection is None:
            return error("NOT_FOUND", f"The requested URL {path} was not found on this server.")
        job_id, verb = match["id"], match["verb"]
        dotted = {
            ("POST", False, None): "create",
            ("GET", False, None): "list",
            ("GET", True, None): "get",
            ("POST", True, "cancel"): "cancel",
            ("DELETE", True, None): "delete",
        }.get((method, job_id is not None, verb))
        if dotted is None:
            return error("NOT_FOUND", f"The requested URL {path} was not found on this server.")
        if dotted == "delete":
            return error("UNIMPLEMENTED", "The fake does not implement delete.")
        if member is None:
            return denial(None, "", "")
        unknown = self._unknown_query(collection, dotted, query)
        if unknown is not None:
            return unknown
        project, location = match["project"], match["location"]
        if project not in (self.project, self.project_number):
            return error("PERMISSION_DENIED", f"Permission denied on resource project {project}.")
        if not LOCATION.match(location):
            return error("INVALID_ARGUMENT", f"Location {location!r} is not a Vertex AI region.")
        parent = f"projects/{self.project}/locations/{location}"
        if dotted == "create":
            return self._create(collection, parent, location, body, member)
        if dotted == "list":
            return self._list(collection, parent, location, query, member)
        resource = f"{parent}/{collection.segment}/{job_id}"
        needed = permission(collection, dotted)
        if not self.authority.allows(member, needed, resource):
            return denial(member, needed, resource)
        name = self._name(location, collection, job_id)
        if name not in self.jobs:
            return error("NOT_FOUND", f'The {collection.schema} "{name}" does not exist.')
        if dotted == "get":
            return 200, self._shown(collection, self.jobs[name], query)
        return self._cancel(collection, name)

    def _unknown_query(
        self, collection: JobCollection, verb: str, query: dict[str, list[str]]
    ) -> tuple[int, dict] | None:
        method = document().method(f"{collection.method_prefix}.{verb}")
        known = {
            name: spec
            for name, spec in method.get("parameters", {}).items()
            if spec.get("location") == "query"
        } | dict(document().raw["parameters"])
        for name, values in query.items():
            if name not in known:
                return error(
                    "INVALID_ARGUMENT",
                    f'Invalid JSON payload received. Unknown name "{name}": Cannot bind query '
                    f"parameter. Field '{name}' could not be found in request message.",
                )
            spec = known[name]
            if discovery.scalar_problem(spec, _query_value(spec, values[-1])) is not None:
                return error(
                    "INVALID_ARGUMENT",
                    f"Invalid value at '{discovery.snake_case(name)}' "
                    f"({discovery.proto_type(spec)}), {json.dumps(values[-1])}",
                )
        if query.get("alt", ["json"])[-1] != "json":
            return error("INVALID_ARGUMENT", "The fake answers only alt=json.")
        return None

    def _name(self, location: str, collection: JobCollection, job_id: str) -> str:
        return f"projects/{self.project_number}/locations/{location}/{collection.segment}/{job_id}"

    def _create(
        self, collection: JobCollection, parent: str, location: str, body: Any, member: str
    ) -> tuple[int, dict[str, Any]]:
        if isinstance(body, _Unparsable):
            return error("INVALID_ARGUMENT", "Invalid JSON payload received. Unexpected token.")
        body = {} if body is None else body
        found = document().validate(collection.schema, body)
        if found and found[0].kind in discovery.PARSING_KINDS:
            return parsing_error(found, collection.body_field)
        needed = permission(collection, "create")
        if not self.authority.allows(member, needed, parent):
            return denial(member, needed, parent)
        problems = found or service_problems(document().schema_id(collection.schema), body)
        if problems:
            return job_error(problems)
        job = document().canonical(collection.schema, body)
        account = job[collection.spec_field].get("serviceAccount")
        if account is not None and not self._may_act_as(member, account):
            return error(
                "INVALID_ARGUMENT",
                f"You do not have permission to act as service_account: {account}. "
                "(or it may not exist).",
            )
        self._next_id += 1
        job_id = str(8_000_000_000_000_000_000 + self._next_id * 1_000_003)
        now = self._now()
        job.update(
            name=self._name(location, collection, job_id),
            state=QUEUED,
            createTime=now,
            updateTime=now,
        )
        self.jobs[job["name"]] = job
        return 200, self._shown(collection, job, {})

    def _may_act_as(self, member: str, account: str) -> bool:
        if self.service_accounts is not None and account not in self.service_accounts:
            return False
        domain = account.partition("@")[2]
        project = (
            domain.removesuffix(".iam.gserviceaccount.com")
            if domain.endswith(".iam.gserviceaccount.com")
            else "-"
        )
        resource = f"projects/{project}/serviceAccounts/{account}"
        return self.authority.allows(member, "iam.serviceAccounts.actAs", resource)

    def _list(
        self,
        collection: JobCollection,
        parent: str,
        location: str,
        query: dict[str, list[str]],
        member: str,
    ) -> tuple[int, dict[str, Any]]:
        needed = permission(collection, "list")
        if not self.authority.allows(member, needed, parent):
            return denial(member, needed, parent)
        try:
            keep = _filter(query.get("filter", [""])[-1])
        except ValueError as problem:
            return error("INVALID_ARGUMENT", str(problem))
        prefix = f"projects/{self.project_number}/locations/{location}/{collection.segment}/"
        matching = [job for name, job in self.jobs.items() if name.startswith(prefix) and keep(job)]
        size = int(query.get("pageSize", [0])[-1] or 0) or self.page_size
        token = query.get("pageToken", [""])[-1]
        try:
            start = int(base64.urlsafe_b64decode(token.encode()).decode()) if token else 0
        except ValueError:
            return error("INVALID_ARGUMENT", f"Invalid page token {token!r}.")
        page = matching[start : start + size]
        answer: dict[str, Any] = {}
        if page:
            answer[collection.segment] = [self._shown(collection, job, query) for job in page]
        if start + size < len(matching):
            answer["nextPageToken"] = base64.urlsafe_b64encode(str(start + size).encode()).decode()
        response = document().method(f"{collection.method_prefix}.list")["response"]["$ref"]
        _assert_fits(response, answer)
        return 200, answer

    def _cancel(self, collection: JobCollection, name: str) -> tuple[int, dict[str, Any]]:
        job = self.jobs[name]
        if job["state"] in FINAL_STATES:
            return error(
                "FAILED_PRECONDITION",
                f"The {collection.schema} {name} is in state {job['state']} and "
                "cannot be cancelled.",
            )
        if job["state"] != CANCELLING:
            self._move(job, CANCELLING, None)
        return 200, {}  # google.protobuf.Empty

    def _shown(self, collection: JobCollection, job: dict[str, Any], query: dict) -> dict[str, Any]:
        shown = copy.deepcopy(job)
        mask = query.get("readMask", [""])[-1]
        if mask:
            shown = _masked(shown, mask.split(","))
        _assert_fits(collection.schema, shown)
        return shown

    def _now(self) -> str:
        return (
            self.clock().astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
        )

    # --- what tests drive ------------------------------------------------------------------------
    def job(self, name: str) -> dict[str, Any]:
        """The stored job (a copy), as a get answers it."""
        with self._lock:
            return copy.deepcopy(self.jobs[name])

    def set_state(
        self, name: str, state: str, *, error_message: str = "", code: int = CODE_INTERNAL
    ) -> None:
        """Move a job on, as Vertex would: only along the document's transitions; RUNNING the
        first time sets startTime, a final state endTime; FAILED carries an error (the
        google.rpc.Status Vertex reports)."""
        with self._lock:
            job = self.jobs[name]
            allowed = TRANSITIONS.get(job["state"], frozenset())
            if state not in allowed:
                raise ValueError(
                    f"{name}: {job['state']} cannot become {state} "
                    f"(allowed: {', '.join(sorted(allowed)) or 'none'})"
                )
            if state == SUCCEEDED and "studySpec" in job:
                active = [t["id"] for t in job.get("trials", []) if t["state"] == TRIAL_ACTIVE]
                if active:
                    raise ValueError(f"{name}: trials {active} are still active")
            failure = None
            if state == FAILED:
                failure = {"code": code, "message": error_message or "The job failed."}
            self._move(job, state, failure)

    def settle_cancel(self, name: str) -> None:
        """A CANCELLING job becomes CANCELLED, as Vertex reports it (error code 1, CANCELLED)."""
        with self._lock:
            job = self.jobs[name]
            if job["state"] != CANCELLING:
                raise ValueError(f"{name} is {job['state']}, not {CANCELLING}")
            self._move(job, CANCELLED, {"code": CODE_CANCELLED, "message": "CANCELED"})

    def _move(self, job: dict[str, Any], state: str, failure: dict | None) -> None:
        now = self._now()
        job["state"], job["updateTime"] = state, now
        if state == RUNNING:
            job.setdefault("startTime", now)
        if state in FINAL_STATES:
            job["endTime"] = now
        if failure is not None:
            job["error"] = failure

    def start_trial(
        self, name: str, parameters: Mapping[str, Any] | None = None, *, seed: int | None = None
    ) -> str:
        """A new ACTIVE trial of a RUNNING tuning job, with `parameters` (checked against the
        study spec) or ones drawn at random from it; returns the trial's id ("1", "2", ...).
        Refused beyond maxTrialCount, or beyond parallelTrialCount trials active at once."""
        with self._lock:
            job = self.jobs[name]
            if job["state"] != RUNNING or "studySpec" not in job:
                raise ValueError(f"{name} is not a running tuning job ({job['state']})")
            trials = job.setdefault("trials", [])
            active = sum(t["state"] == TRIAL_ACTIVE for t in trials)
            if len(trials) >= job["maxTrialCount"] or active >= job["parallelTrialCount"]:
                raise ValueError(
                    f"{name}: {len(trials)} trials, {active} active: no room for another"
                )
            if parameters is None:
                parameters = draw(job["studySpec"], len(trials) + 1 if seed is None else seed)
            chosen = dict(parameters)
            _check_parameters(job["studySpec"], chosen)
            trial_id = str(len(trials) + 1)
            self._next_id += 1
            custom_job = self._name(
                _location(name),
                CUSTOM_JOBS,
                str(8_000_000_000_000_000_000 + self._next_id * 1_000_003),
            )
            trials.append(
                {
                    "id": trial_id,
                    "state": TRIAL_ACTIVE,
                    "startTime": self._now(),
                    "parameters": [{"parameterId": k, "value": v} for k, v in chosen.items()],
                    "customJob": custom_job,
                }
            )
            job["updateTime"] = self._now()
            _assert_fits(TUNING_JOBS.schema, job)
            return trial_id

    def end_trial(
        self,
        name: str,
        trial_id: str,
        *,
        value: float | None = None,
        step: int = 0,
        infeasible_reason: str = "",
    ) -> None:
        """An ACTIVE trial ends: SUCCEEDED with its final measurement of the study's metric
        (`value` at `step`), or INFEASIBLE with `infeasible_reason` (no value: the trial failed
        or reported nothing)."""
        with self._lock:
            job = self.jobs[name]
            trial = next(t for t in job.get("trials", []) if t["id"] == trial_id)
            if trial["state"] != TRIAL_ACTIVE:
                raise ValueError(f"trial {trial_id} of {name} is {trial['state']}")
            now = self._now()
            trial["endTime"] = now
            if value is None:
                trial["state"] = TRIAL_INFEASIBLE
                trial["infeasibleReason"] = infeasible_reason or "The trial reported no metric."
            else:
                metric = job["studySpec"]["metrics"][0]["metricId"]
                trial["state"] = TRIAL_SUCCEEDED
                trial["finalMeasurement"] = {
                    "stepCount": str(step),
                    "metrics": [{"metricId": metric, "value": value}],
                }
            job["updateTime"] = now
            _assert_fits(TUNING_JOBS.schema, job)

    def environment(self, name: str, trial_id: str | None = None) -> dict[str, str]:
        """The variables Vertex gives the job's container (the document, on
        baseOutputDirectory): AIP_MODEL_DIR, AIP_CHECKPOINT_DIR, AIP_TENSORBOARD_LOG_DIR under
        the job's output directory, or under <base>/<trial id>/ with CLOUD_ML_TRIAL_ID for a
        trial."""
        job = self.jobs[name]
        spec = job.get("jobSpec") or job["trialJobSpec"]
        base = spec["baseOutputDirectory"]["outputUriPrefix"].rstrip("/") + "/"
        env = {}
        if trial_id is not None:
            base += f"{trial_id}/"
            env["CLOUD_ML_TRIAL_ID"] = trial_id
        env |= {
            "AIP_MODEL_DIR": base + "model/",
            "AIP_CHECKPOINT_DIR": base + "checkpoints/",
            "AIP_TENSORBOARD_LOG_DIR": base + "logs/",
        }
        return env

    def container_arguments(self, name: str, trial_id: str | None = None) -> list[str]:
        """The primary pool's container command and args, as Vertex runs them; a trial's get its
        parameters appended as `--<parameterId>=<value>`."""
        job = self.jobs[name]
        spec = job.get("jobSpec") or job["trialJobSpec"]
        container = spec["workerPoolSpecs"][0]["containerSpec"]
        arguments = list(container.get("command", [])) + list(container.get("args", []))
        if trial_id is not None:
            trial = next(t for t in job["trials"] if t["id"] == trial_id)
            arguments += [
                f"--{p['parameterId']}={_argument(p['value'])}" for p in trial["parameters"]
            ]
        return arguments


def _query_value(spec: Mapping[str, Any], text: str) -> Any:
    """A query parameter's text as the JSON value it stands for (booleans are words)."""
    if spec.get("type") == "boolean":
        return {"true": True, "false": False}.get(text, text)
    return text


class _Unparsable:
    """A request body that is not JSON."""


def _location(name: str) -> str:
    return name.split("/")[3]


def _argument(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _assert_fits(schema: str, answer: Any) -> None:
    """The fake's own answer must be what the document describes."""
    problems = document().validate(schema, answer, output=True)
    assert not problems, f"the fake's {schema} answer does not fit the document: {problems}"


def _masked(job: dict[str, Any], paths: list[str]) -> dict[str, Any]:
    shown: dict[str, Any] = {}
    for path in paths:
        head, _, rest = path.strip().partition(".")
        key = next((k for k in job if discovery.snake_case(k) == discovery.snake_case(head)), None)
        if key is None:
            continue
        if rest and isinstance(job[key], dict):
            shown[key] = {**shown.get(key, {}), **_masked(job[key], [rest])}
        else:
            shown[key] = job[key]
    return shown


FILTER_TERM = re.compile(
    r"^(?P<field>state|display_name|displayName|labels\.[\w-]+)\s*(?P<op>!=|=|:)\s*"
    r'(?P<value>"[^"]*"|\S+)$'
)


def _filter(text: str) -> Callable[[dict[str, Any]], bool]:
    """The part of AIP-160 the CLI needs: `state`, `display_name` and `labels.KEY` compared with
    `=`, `!=`, or `:*` (has), joined by AND. Anything else is refused, naming it (the fake's
    limit, not the API's)."""
    tests: list[Callable[[dict[str, Any]], bool]] = []
    for term in filter(None, (t.strip() for t in re.split(r"\s+AND\s+", text.strip()))):
        match = FILTER_TERM.match(term)
        if match is None:
            raise ValueError(f"The fake does not parse the filter term {term!r}.")
        op, value = match["op"], match["value"].strip('"')
        if op == ":" and value != "*":
            raise ValueError(f"The fake parses only ':*' (has), not {term!r}.")
        tests.append(_term_test(match["field"], op, value))
    return lambda job: all(test(job) for test in tests)


def _term_test(name: str, op: str, value: str) -> Callable[[dict[str, Any]], bool]:
    """One parsed term of a filter: `name op value`, `op` one of ":" (has), "=", "!="."""

    def actual(job: dict[str, Any]) -> str | None:
        if name.startswith("labels."):
            return job.get("labels", {}).get(name.removeprefix("labels."))
        return job.get("state" if name == "state" else "displayName")

    if op == ":":
        return lambda job: actual(job) is not None
    if op == "=":
        return lambda job: actual(job) == value
    return lambda job: actual(job) != value


def draw(study: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """Parameters drawn at random from a study spec (Vertex's RANDOM_SEARCH, in miniature)."""
    rng = random.Random(seed)
    chosen: dict[str, Any] = {}
    for parameter in study["parameters"]:
        name = parameter["parameterId"]
        log = parameter.get("scaleType") in LOG_SCALES
        if "doubleValueSpec" in parameter:
            low, high = (float(parameter["doubleValueSpec"][k]) for k in ("minValue", "maxValue"))
            chosen[name] = (
                math.exp(rng.uniform(math.log(low), math.log(high)))
                if log
                else rng.uniform(low, high)
            )
        elif "integerValueSpec" in parameter:
            low, high = (int(parameter["integerValueSpec"][k]) for k in ("minValue", "maxValue"))
            chosen[name] = rng.randint(low, high)
        elif "discreteValueSpec" in parameter:
            chosen[name] = rng.choice(parameter["discreteValueSpec"]["values"])
        else:
            chosen[name] = rng.choice(parameter["categoricalValueSpec"]["values"])
    return chosen


def _check_parameters(study: Mapping[str, Any], chosen: Mapping[str, Any]) -> None:
    specs = {p["parameterId"]: p for p in study["parameters"]}
    if set(chosen) != set(specs):
        raise ValueError(
            f"a trial sets every study parameter: {sorted(specs)}, not {sorted(chosen)}"
        )
    for name, value in chosen.items():
        spec = specs[name]
        if "doubleValueSpec" in spec:
            low, high = (float(spec["doubleValueSpec"][k]) for k in ("minValue", "maxValue"))
            ok = isinstance(value, int | float) and low <= value <= high
        elif "integerValueSpec" in spec:
            low, high = (int(spec["integerValueSpec"][k]) for k in ("minValue", "maxValue"))
            ok = isinstance(value, int) and low <= value <= high
        elif "discreteValueSpec" in spec:
            ok = value in spec["discreteValueSpec"]["values"]
        else:
            ok = value in spec["categoricalValueSpec"]["values"]
        if not ok:
            raise ValueError(f"trial parameter {name}={value!r} is outside the study spec")


# --- well-formed bodies, for tests -------------------------------------------------------------
def sample_custom_job(**changes: Any) -> dict[str, Any]:
    """A well-formed CustomJob body: one T4 on n1-highmem-4, a container, the output prefix."""
    body = {
        "displayName": "kgg-dev-run-1",
        "labels": {"kgg-stack": "dev", "kgg-run": "run-1"},
        "jobSpec": {
            "workerPoolSpecs": [
                {
                    "machineSpec": {
                        "machineType": "n1-highmem-4",
                        "acceleratorType": "NVIDIA_TESLA_T4",
                        "acceleratorCount": 1,
                    },
                    "replicaCount": "1",
                    "diskSpec": {"bootDiskType": "pd-ssd", "bootDiskSizeGb": 100},
                    "containerSpec": {
                        "imageUri": "gcr.io/distroless/python3-debian12",
                        "command": ["python3", "-c", "print('hi')"],
                        "args": ["--", "train", "--recipe", "fast"],
                        "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}],
                    },
                }
            ],
            "serviceAccount": "kgg-dev-jobs@kgg-demo-project.iam.gserviceaccount.com",
            "baseOutputDirectory": {"outputUriPrefix": "gs://kgg-test-bucket/runs/run-1/"},
            "scheduling": {"strategy": "STANDARD", "timeout": "86400s"},
        },
    }
    body.update(changes)
    return body


def sample_tuning_job(**changes: Any) -> dict[str, Any]:
    """A well-formed HyperparameterTuningJob: 4 trials, 2 at a time, over three parameters."""
    body = {
        "displayName": "kgg-dev-sweep-1",
        "labels": {"kgg-stack": "dev", "kgg-run": "sweep-1"},
        "studySpec": {
            "metrics": [{"metricId": "micro_f1", "goal": "MAXIMIZE"}],
            "parameters": [
                {
                    "parameterId": "finetune-lr",
                    "doubleValueSpec": {"minValue": 1e-5, "maxValue": 1e-2},
                    "scaleType": "UNIT_LOG_SCALE",
                },
                {
                    "parameterId": "unfreeze-blocks",
                    "integerValueSpec": {"minValue": "1", "maxValue": "3"},
                    "scaleType": "UNIT_LINEAR_SCALE",
                },
                {"parameterId": "recipe", "categoricalValueSpec": {"values": ["fast", "guide"]}},
            ],
            "algorithm": "RANDOM_SEARCH",
            "measurementSelectionType": "LAST_MEASUREMENT",
        },
        "maxTrialCount": 4,
        "parallelTrialCount": 2,
        "maxFailedTrialCount": 1,
        "trialJobSpec": copy.deepcopy(sample_custom_job()["jobSpec"]),
    }
    body["trialJobSpec"]["baseOutputDirectory"]["outputUriPrefix"] = (
        "gs://kgg-test-bucket/runs/sweep-1/"
    )
    body.update(changes)
    return body


@contextmanager
def running_fake(authority: Authority, **settings: Any) -> Iterator[FakeVertex]:
    """The fake served on 127.0.0.1 until the block ends; `.url` is the API's root
    (`<url>v1/projects/...`), what the CLI's endpoint override takes."""
    fake = FakeVertex(authority, **settings)
    with loopback.serving(fake.answer) as url:
        fake.url = url
        yield fake
