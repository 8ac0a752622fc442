"""The Vertex AI fake refuses what Google's discovery document says the API refuses, answers in
the document's shapes, checks IAM per method, and moves jobs and trials only as tests drive it."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests import discovery
from tests import fake_aiplatform as vertex
from tests.fake_aiplatform import sample_custom_job as custom_job
from tests.fake_aiplatform import sample_tuning_job as tuning_job

ROOT = Path(__file__).resolve().parents[1]
PROJECT, NUMBER, REGION = "kgg-demo-project", "123456789012", "us-central1"
PARENT = f"projects/{PROJECT}/locations/{REGION}"
JOBS_ACCOUNT = f"kgg-dev-jobs@{PROJECT}.iam.gserviceaccount.com"
OWNER, VIEWER, SUBMITTER = "user:you@example.com", "user:viewer@example.com", "user:ci@example.com"
VERBS = ("create", "get", "list", "cancel")


def kinds(violations: list[discovery.Violation]) -> list[tuple[str, str]]:
    return [(v.json_path, v.kind) for v in violations]


# --- the document ---------------------------------------------------------------------------------
def test_the_document_comes_from_the_installed_package_not_a_copy() -> None:
    document = vertex.document()
    assert (document.name, document.version) == ("aiplatform", "v1")
    assert document.revision >= "20261106"
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert [name for name in listed if name.endswith("aiplatform.v1.json")] == []


def test_read_only_fields_are_the_documents() -> None:
    """The fake's notion of output-only is the document's marker (and its "Output only."
    sentence): every such field of CustomJob, and no field the user sets."""
    properties = vertex.document().schemas["GoogleCloudAiplatformV1CustomJob"]["properties"]
    read_only = {name for name, prop in properties.items() if discovery.is_read_only(prop)}
    assert read_only == {
        "createTime", "endTime", "error", "name", "satisfiesPzi", "satisfiesPzs", "startTime",
        "state", "updateTime", "webAccessUris",
    }  # fmt: skip


# --- well-formed bodies ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "scheduling",
    [
        {"strategy": "STANDARD", "timeout": "86400s"},
        {"strategy": "SPOT", "timeout": "604800s"},
        {"strategy": "FLEX_START", "maxWaitDuration": "7200s", "timeout": "86400.5s"},
    ],
)
def test_accepts_a_well_formed_custom_job(scheduling: dict[str, str]) -> None:
    body = custom_job()
    body["jobSpec"]["scheduling"] = scheduling
    if scheduling["strategy"] == "FLEX_START":  # Dynamic Workload Scheduler takes no T4
        body["jobSpec"]["workerPoolSpecs"][0]["machineSpec"].update(
            machineType="g2-standard-4", acceleratorType="NVIDIA_L4"
        )
    assert vertex.validate("CustomJob", body) == []


@pytest.mark.parametrize(
    ("machine", "timeout", "path"),
    [
        ({}, "86400s", "jobSpec.workerPoolSpecs[0].machineSpec.acceleratorType"),
        ({"machineType": "g2-standard-4", "acceleratorType": "NVIDIA_L4"}, "691200s",
         "jobSpec.scheduling.timeout"),
    ],
)  # fmt: skip
def test_refuses_flex_start_without_its_gpus_or_beyond_seven_days(
    machine: dict[str, str], timeout: str, path: str
) -> None:
    body = custom_job()  # a T4
    body["jobSpec"]["workerPoolSpecs"][0]["machineSpec"].update(machine)
    body["jobSpec"]["scheduling"] = {"strategy": "FLEX_START", "timeout": timeout}
    assert [v.json_path for v in vertex.validate("CustomJob", body)] == [path]


def test_accepts_a_well_formed_tuning_job() -> None:
    assert vertex.validate("HyperparameterTuningJob", tuning_job()) == []


def test_numbers_take_the_forms_the_json_mapping_allows() -> None:
    body = custom_job()
    pool = body["jobSpec"]["workerPoolSpecs"][0]
    pool["replicaCount"] = 1  # int64 as a number
    pool["machineSpec"]["acceleratorCount"] = "1"  # int32 as a string
    pool["diskSpec"]["bootDiskSizeGb"] = 100.0  # a whole float
    assert vertex.validate("CustomJob", body) == []


def test_proto_field_names_are_accepted_as_the_json_mapping_requires() -> None:
    body = custom_job()
    body["display_name"] = body.pop("displayName")
    assert vertex.validate("CustomJob", body) == []
    body["displayName"] = "again"
    assert kinds(vertex.validate("CustomJob", body)) == [("", "unknown")]


# --- what it refuses ------------------------------------------------------------------------------
def test_refuses_unknown_fields_at_every_depth() -> None:
    body = custom_job(priority="high")
    body["jobSpec"]["workerPoolSpecs"][0]["machineSpec"]["gpuType"] = "nvidia-tesla-t4"
    found = vertex.validate("CustomJob", body)
    assert sorted(str(v) for v in found) == [
        "jobSpec.workerPoolSpecs[0].machineSpec.gpuType: no such field in "
        "GoogleCloudAiplatformV1MachineSpec",
        "priority: no such field in GoogleCloudAiplatformV1CustomJob",
    ]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "projects/p/locations/l/customJobs/1"),
        ("state", "JOB_STATE_RUNNING"),
        ("createTime", "2026-12-01T10:00:00Z"),
        ("error", {"code": 1}),
        ("webAccessUris", {"workerpool0-0": "https://x"}),
    ],
)
def test_refuses_output_only_fields(field: str, value: Any) -> None:
    assert kinds(vertex.validate("CustomJob", custom_job(**{field: value}))) == [
        (field, "read-only")
    ]


def test_refuses_trials_in_a_tuning_job_request() -> None:
    body = tuning_job(trials=[{"parameters": []}])
    assert kinds(vertex.validate("HyperparameterTuningJob", body)) == [("trials", "read-only")]


@pytest.mark.parametrize(
    ("where", "value"),
    [
        (("jobSpec", "workerPoolSpecs", 0, "replicaCount"), "one"),
        (("jobSpec", "workerPoolSpecs", 0, "replicaCount"), 1.5),
        (("jobSpec", "workerPoolSpecs", 0, "replicaCount"), "99999999999999999999"),
        (("jobSpec", "workerPoolSpecs", 0, "machineSpec", "acceleratorCount"), True),
        (("jobSpec", "workerPoolSpecs", 0, "machineSpec", "machineType"), 4),
        (("jobSpec", "workerPoolSpecs", 0, "containerSpec", "args"), "--recipe fast"),
        (("jobSpec", "workerPoolSpecs", 0, "containerSpec", "imageUri"), ["a", "b"]),
        (("jobSpec", "scheduling", "timeout"), "24h"),
        (("jobSpec", "scheduling", "timeout"), 86400),
        (("jobSpec", "scheduling", "maxWaitDuration"), "3600"),
        (("jobSpec", "scheduling", "disableRetries"), "true"),
        (("jobSpec", "baseOutputDirectory"), "gs://bucket/runs/"),
        (("labels",), ["kgg-stack", "dev"]),
    ],
)
def test_refuses_wrong_json_types(where: tuple, value: Any) -> None:
    body = custom_job()
    target = body
    for part in where[:-1]:
        target = target[part]
    target[where[-1]] = value
    found = vertex.validate("CustomJob", body)
    assert kinds(found) == [(discovery.render_path(where), "type")]


@pytest.mark.parametrize(
    ("where", "value"),
    [
        (("jobSpec", "scheduling", "strategy"), "FLEX"),
        (("jobSpec", "scheduling", "strategy"), "spot"),
        (("jobSpec", "workerPoolSpecs", 0, "machineSpec", "acceleratorType"), "nvidia-tesla-t4"),
    ],
)
def test_refuses_enum_values_the_document_does_not_list(where: tuple, value: str) -> None:
    body = custom_job()
    target = body
    for part in where[:-1]:
        target = target[part]
    target[where[-1]] = value
    (found,) = vertex.validate("CustomJob", body)
    assert (found.json_path, found.kind) == (discovery.render_path(where), "enum")
    assert "FLEX_START" in found.message or "NVIDIA_TESLA_T4" in found.message


def test_refuses_missing_required_fields() -> None:
    body = custom_job()
    del body["displayName"]
    del body["jobSpec"]["workerPoolSpecs"][0]["containerSpec"]["imageUri"]
    assert sorted(kinds(vertex.validate("CustomJob", body))) == [
        ("displayName", "required"),
        ("jobSpec.workerPoolSpecs[0].containerSpec.imageUri", "required"),
    ]
    study = tuning_job()
    del study["studySpec"]["metrics"][0]["goal"]
    del study["parallelTrialCount"]
    assert sorted(kinds(vertex.validate("HyperparameterTuningJob", study))) == [
        ("parallelTrialCount", "required"),
        ("studySpec.metrics[0].goal", "required"),
    ]


@pytest.mark.parametrize(
    ("change", "path"),
    [
        (lambda b: b["labels"].update({"Stack": "dev"}), "labels.Stack"),
        (lambda b: b["labels"].update({"kgg-run": "x" * 65}), "labels.kgg-run"),
        (lambda b: b.update(displayName="x" * 129), "displayName"),
        (
            lambda b: b["jobSpec"]["workerPoolSpecs"][0]["machineSpec"].pop("acceleratorCount"),
            "jobSpec.workerPoolSpecs[0].machineSpec.acceleratorType",
        ),
        (
            lambda b: b["jobSpec"]["workerPoolSpecs"][0]["containerSpec"]["env"].append(
                {"name": "KGG-RUN", "value": "1"}
            ),
            "jobSpec.workerPoolSpecs[0].containerSpec.env[1].name",
        ),
        (
            lambda b: b["jobSpec"]["baseOutputDirectory"].update(outputUriPrefix="/tmp/runs"),
            "jobSpec.baseOutputDirectory.outputUriPrefix",
        ),
        (lambda b: b["jobSpec"].update(workerPoolSpecs=[]), "jobSpec.workerPoolSpecs"),
    ],
)
def test_refuses_custom_jobs_the_documents_descriptions_rule_out(change: Any, path: str) -> None:
    body = custom_job()
    change(body)
    assert [v.json_path for v in vertex.validate("CustomJob", body)] == [path]


@pytest.mark.parametrize(
    ("change", "path"),
    [
        (
            lambda s: s["parameters"][0]["doubleValueSpec"].update(minValue=0),
            "studySpec.parameters[0].scaleType",
        ),
        (
            lambda s: s["parameters"][1]["integerValueSpec"].update(minValue="4"),
            "studySpec.parameters[1].integerValueSpec",
        ),
        (lambda s: s.update(algorithm="GRID_SEARCH"), "studySpec.parameters[0]"),
        (
            lambda s: s["parameters"][2].update(scaleType="UNIT_LINEAR_SCALE"),
            "studySpec.parameters[2].scaleType",
        ),
        (
            lambda s: s["parameters"].append(
                {"parameterId": "batch-size", "discreteValueSpec": {"values": [64, 32]}}
            ),
            "studySpec.parameters[3].discreteValueSpec.values",
        ),
        (
            lambda s: s["parameters"][1].update(parameterId="finetune-lr"),
            "studySpec.parameters[0].parameterId",
        ),
        (
            lambda s: s["parameters"][0].update(integerValueSpec={"minValue": 1, "maxValue": 2}),
            "studySpec.parameters[0]",
        ),
    ],
)
def test_refuses_study_specs_the_documents_descriptions_rule_out(change: Any, path: str) -> None:
    body = tuning_job()
    change(body["studySpec"])
    assert vertex.validate("HyperparameterTuningJob", body)[0].json_path == path


# --- the API over HTTP ----------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def authority() -> vertex.StaticAuthority:
    everything = [
        (vertex.permission(c, verb), f"projects/{PROJECT}")
        for c in vertex.COLLECTIONS.values()
        for verb in VERBS
    ]
    act_as = ("iam.serviceAccounts.actAs", f"projects/{PROJECT}/serviceAccounts/{JOBS_ACCOUNT}")
    reads = [(p, s) for p, s in everything if p.endswith((".get", ".list"))]
    creates = [(p, s) for p, s in everything if p.endswith(".create")]
    return vertex.StaticAuthority({OWNER: [*everything, act_as], VIEWER: reads, SUBMITTER: creates})


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fake(authority: vertex.StaticAuthority, clock: Clock) -> Iterator[vertex.FakeVertex]:
    with vertex.running_fake(authority, clock=clock, page_size=2) as served:
        yield served


def call(
    fake: vertex.FakeVertex, method: str, path: str, body: Any = None, member: str | None = OWNER
) -> tuple[int, dict[str, Any]]:
    """One HTTP request to the served fake, as `member` (None: no Authorization header)."""
    authority = fake.authority
    assert isinstance(authority, vertex.StaticAuthority)
    headers = {"Content-Type": "application/json"}
    if member is not None:
        token = next((t for t, m in authority.tokens.items() if m == member), None)
        headers["Authorization"] = f"Bearer {token or authority.issue(member)}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(fake.url + path, data, headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as failure:
        return failure.code, json.loads(failure.read())


def create(fake: vertex.FakeVertex, body: dict | None = None, kind: str = "customJobs") -> str:
    body = body or (custom_job() if kind == "customJobs" else tuning_job())
    status, answer = call(fake, "POST", f"v1/{PARENT}/{kind}", body)
    assert status == 200, answer
    return answer["name"]


def test_create_answers_the_job_as_vertex_shapes_it(fake: vertex.FakeVertex, clock: Clock) -> None:
    status, job = call(fake, "POST", f"v1/{PARENT}/customJobs", custom_job())
    assert status == 200
    assert job["name"].startswith(f"projects/{NUMBER}/locations/{REGION}/customJobs/")
    assert job["state"] == "JOB_STATE_QUEUED"
    assert job["createTime"] == job["updateTime"] == "2026-12-03T09:00:00.000000Z"
    pool = job["jobSpec"]["workerPoolSpecs"][0]
    assert pool["replicaCount"] == "1"  # int64: a string, as the API writes it
    assert pool["machineSpec"]["acceleratorCount"] == 1
    assert vertex.document().validate("CustomJob", job, output=True) == []
    clock.advance(minutes=1)
    status, again = call(fake, "GET", f"v1/{job['name']}")
    assert (status, again) == (200, job)


def test_create_refuses_an_unknown_field_in_the_apis_words(fake: vertex.FakeVertex) -> None:
    body = custom_job()
    body["jobSpec"]["gpus"] = 1
    status, answer = call(fake, "POST", f"v1/{PARENT}/customJobs", body)
    assert status == 400
    error = answer["error"]
    assert (error["code"], error["status"]) == (400, "INVALID_ARGUMENT")
    assert error["message"] == (
        "Invalid JSON payload received. Unknown name \"gpus\" at 'custom_job.job_spec': "
        "Cannot find field."
    )
    (detail,) = error["details"]
    assert detail["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    assert detail["fieldViolations"] == [
        {"field": "custom_job.job_spec", "description": error["message"]}
    ]
    assert fake.jobs == {}


def test_create_names_each_bad_value_by_its_field_path(fake: vertex.FakeVertex) -> None:
    body = custom_job()
    body["jobSpec"]["scheduling"] = {"strategy": "FLEX", "maxWaitDuration": "2h"}
    status, answer = call(fake, "POST", f"v1/{PARENT}/customJobs", body)
    assert status == 400
    assert answer["error"]["message"].splitlines() == [
        "Invalid value at 'custom_job.job_spec.scheduling.strategy' (TYPE_ENUM), \"FLEX\"",
        "Invalid value at 'custom_job.job_spec.scheduling.max_wait_duration' "
        '(type.googleapis.com/google.protobuf.Duration), "2h"',
    ]


def test_create_refuses_output_only_and_missing_fields_as_vertex_lists_them(
    fake: vertex.FakeVertex,
) -> None:
    body = custom_job(state="JOB_STATE_RUNNING")
    del body["displayName"]
    status, answer = call(fake, "POST", f"v1/{PARENT}/customJobs", body)
    assert status == 400
    assert answer["error"]["status"] == "INVALID_ARGUMENT"
    assert answer["error"]["message"] == (
        "List of found errors:\t1.Field: state; Message: Output only field must not be set.\t"
        "2.Field: display_name; Message: Required field is not set.\t"
    )


def test_create_reports_the_accelerator_pairing_as_vertex_does(fake: vertex.FakeVertex) -> None:
    body = custom_job()
    del body["jobSpec"]["workerPoolSpecs"][0]["machineSpec"]["acceleratorCount"]
    status, answer = call(fake, "POST", f"v1/{PARENT}/customJobs", body)
    assert status == 400
    assert answer["error"]["message"] == (
        "List of found errors:\t1.Field: job_spec.worker_pool_specs[0].machine_spec."
        "accelerator_type; Message: Both `accelerator_type` and `accelerator_count` should be "
        "specified or none.\t"
    )


def test_a_request_without_a_token_is_unauthenticated(fake: vertex.FakeVertex) -> None:
    status, answer = call(fake, "GET", f"v1/{PARENT}/customJobs", member=None)
    assert (status, answer["error"]["status"]) == (401, "UNAUTHENTICATED")


def test_each_method_needs_its_own_permission(fake: vertex.FakeVertex) -> None:
    name = create(fake)
    status, answer = call(fake, "POST", f"v1/{PARENT}/customJobs", custom_job(), member=VIEWER)
    assert status == 403
    assert answer["error"]["status"] == "PERMISSION_DENIED"
    assert answer["error"]["message"] == (
        "Permission 'aiplatform.customJobs.create' denied on resource "
        f"'//aiplatform.googleapis.com/{PARENT}' (or it may not exist)."
    )
    info = answer["error"]["details"][0]
    assert info["reason"] == "IAM_PERMISSION_DENIED"
    assert info["metadata"] == {"permission": "aiplatform.customJobs.create", "resource": PARENT}
    assert call(fake, "GET", f"v1/{name}", member=VIEWER)[0] == 200
    assert call(fake, "GET", f"v1/{PARENT}/customJobs", member=VIEWER)[0] == 200
    status, answer = call(fake, "POST", f"v1/{name}:cancel", {}, member=VIEWER)
    assert status == 403
    assert answer["error"]["details"][0]["metadata"]["permission"] == (
        "aiplatform.customJobs.cancel"
    )
    status, _ = call(fake, "GET", f"v1/{PARENT}/hyperparameterTuningJobs", member=SUBMITTER)
    assert status == 403


def test_create_needs_act_as_on_the_jobs_service_account(fake: vertex.FakeVertex) -> None:
    status, answer = call(fake, "POST", f"v1/{PARENT}/customJobs", custom_job(), member=SUBMITTER)
    assert status == 400
    assert answer["error"]["message"] == (
        f"You do not have permission to act as service_account: {JOBS_ACCOUNT}. "
        "(or it may not exist)."
    )
    other = custom_job()
    other["jobSpec"]["serviceAccount"] = f"someone-else@{PROJECT}.iam.gserviceaccount.com"
    assert call(fake, "POST", f"v1/{PARENT}/customJobs", other)[0] == 400
    assert fake.jobs == {}


def test_an_account_that_does_not_exist_is_refused_even_to_the_owner(
    authority: vertex.StaticAuthority,
) -> None:
    with vertex.running_fake(authority, service_accounts={"other@x.iam.gserviceaccount.com"}) as f:
        status, answer = call(f, "POST", f"v1/{PARENT}/customJobs", custom_job())
    assert status == 400
    assert "act as service_account" in answer["error"]["message"]


def test_the_project_may_be_named_by_id_or_number_and_no_other(fake: vertex.FakeVertex) -> None:
    name = create(fake)
    by_id = name.replace(f"projects/{NUMBER}/", f"projects/{PROJECT}/")
    assert call(fake, "GET", f"v1/{by_id}")[1]["name"] == name
    status, answer = call(fake, "GET", "v1/projects/someone-else/locations/us-central1/customJobs")
    assert (status, answer["error"]["status"]) == (403, "PERMISSION_DENIED")


def test_an_unknown_job_or_query_parameter_is_refused(fake: vertex.FakeVertex) -> None:
    status, answer = call(fake, "GET", f"v1/{PARENT}/customJobs/42")
    assert (status, answer["error"]["status"]) == (404, "NOT_FOUND")
    status, answer = call(fake, "GET", f"v1/{PARENT}/customJobs?orderBy=create_time")
    assert status == 400
    assert 'Unknown name "orderBy": Cannot bind query parameter' in answer["error"]["message"]
    status, answer = call(fake, "GET", f"v1/{PARENT}/customJobs?pageSize=ten")
    assert (status, answer["error"]["message"]) == (
        400,
        "Invalid value at 'page_size' (TYPE_INT32), \"ten\"",
    )


def test_a_job_moves_only_along_the_documents_states(fake: vertex.FakeVertex, clock: Clock) -> None:
    name = create(fake)
    clock.advance(minutes=7)
    fake.set_state(name, vertex.PENDING)
    clock.advance(minutes=3)
    fake.set_state(name, vertex.RUNNING)
    running = call(fake, "GET", f"v1/{name}")[1]
    assert running["startTime"] == "2026-12-03T09:10:00.000000Z"
    assert "endTime" not in running
    with pytest.raises(ValueError, match="RUNNING cannot become JOB_STATE_QUEUED"):
        fake.set_state(name, vertex.QUEUED)
    clock.advance(hours=1)
    fake.set_state(name, vertex.FAILED, error_message="The replica workerpool0-0 exited with 2.")
    failed = call(fake, "GET", f"v1/{name}")[1]
    assert (failed["state"], failed["endTime"]) == (
        "JOB_STATE_FAILED",
        "2026-12-03T10:10:00.000000Z",
    )
    assert failed["error"] == {"code": 13, "message": "The replica workerpool0-0 exited with 2."}
    with pytest.raises(ValueError, match="allowed: none"):
        fake.set_state(name, vertex.RUNNING)


def test_cancel_goes_through_cancelling_and_a_final_job_cannot_be_cancelled(
    fake: vertex.FakeVertex,
) -> None:
    name = create(fake)
    assert call(fake, "POST", f"v1/{name}:cancel", {}) == (200, {})
    assert fake.job(name)["state"] == vertex.CANCELLING
    assert call(fake, "POST", f"v1/{name}:cancel", {}) == (200, {})
    fake.settle_cancel(name)
    job = call(fake, "GET", f"v1/{name}")[1]
    assert (job["state"], job["error"]) == (vertex.CANCELLED, {"code": 1, "message": "CANCELED"})
    status, answer = call(fake, "POST", f"v1/{name}:cancel", {})
    assert (status, answer["error"]["status"]) == (400, "FAILED_PRECONDITION")


def test_list_filters_by_label_and_state_and_pages(fake: vertex.FakeVertex) -> None:
    names = [create(fake, custom_job(labels={"kgg-stack": stack})) for stack in "abaa"]
    fake.set_state(names[3], vertex.RUNNING)
    base = f"v1/{PARENT}/customJobs"
    status, page = call(fake, "GET", base + "?filter=labels.kgg-stack%3Da")
    assert status == 200
    assert [j["name"] for j in page["customJobs"]] == [names[0], names[2]]
    status, rest = call(
        fake, "GET", base + f"?filter=labels.kgg-stack%3Da&pageToken={page['nextPageToken']}"
    )
    assert [j["name"] for j in rest["customJobs"]] == [names[3]]
    assert "nextPageToken" not in rest
    query = "?filter=labels.kgg-stack%3Da%20AND%20state%3DJOB_STATE_RUNNING&readMask=name,state"
    assert call(fake, "GET", base + query)[1] == {
        "customJobs": [{"name": names[3], "state": "JOB_STATE_RUNNING"}]
    }
    assert call(fake, "GET", base + "?filter=labels.nothing%3A*")[1] == {}
    status, answer = call(fake, "GET", base + "?filter=create_time%3E%222026%22")
    assert (status, answer["error"]["status"]) == (400, "INVALID_ARGUMENT")


def test_a_tuning_job_runs_its_trials_within_its_counts(fake: vertex.FakeVertex) -> None:
    name = create(fake, kind="hyperparameterTuningJobs")
    with pytest.raises(ValueError, match="not a running tuning job"):
        fake.start_trial(name)
    fake.set_state(name, vertex.RUNNING)
    first = fake.start_trial(name, {"finetune-lr": 1e-3, "unfreeze-blocks": 2, "recipe": "fast"})
    second = fake.start_trial(name)
    assert (first, second) == ("1", "2")
    with pytest.raises(ValueError, match="no room"):
        fake.start_trial(name)  # parallelTrialCount is 2
    fake.end_trial(name, first, value=0.9)
    with pytest.raises(ValueError, match="outside the study spec"):
        fake.start_trial(name, {"finetune-lr": 1.0, "unfreeze-blocks": 2, "recipe": "fast"})
    fake.end_trial(name, second, infeasible_reason="The trial exited with 2.")
    fake.start_trial(name)
    with pytest.raises(ValueError, match="still active"):
        fake.set_state(name, vertex.SUCCEEDED)
    job = call(fake, "GET", f"v1/{name}")[1]
    trials = {t["id"]: t for t in job["trials"]}
    assert trials["1"]["state"] == "SUCCEEDED"
    assert trials["1"]["finalMeasurement"] == {
        "stepCount": "0",
        "metrics": [{"metricId": "micro_f1", "value": 0.9}],
    }
    assert trials["2"]["state"] == "INFEASIBLE"
    assert trials["2"]["infeasibleReason"] == "The trial exited with 2."
    assert trials["1"]["parameters"] == [
        {"parameterId": "finetune-lr", "value": 1e-3},
        {"parameterId": "unfreeze-blocks", "value": 2},
        {"parameterId": "recipe", "value": "fast"},
    ]
    assert trials["3"]["state"] == "ACTIVE"
    assert trials["1"]["customJob"].startswith(f"projects/{NUMBER}/locations/{REGION}/customJobs/")
    assert vertex.document().validate("HyperparameterTuningJob", job, output=True) == []


def test_drawn_trial_parameters_lie_in_the_study_spec() -> None:
    study = tuning_job()["studySpec"]
    for seed in range(50):
        drawn = vertex.draw(study, seed)
        assert 1e-5 <= drawn["finetune-lr"] <= 1e-2
        assert drawn["unfreeze-blocks"] in (1, 2, 3)
        assert drawn["recipe"] in ("fast", "guide")
    assert len({vertex.draw(study, seed)["finetune-lr"] for seed in range(50)}) == 50


def test_a_trial_gets_its_parameters_as_arguments_and_its_own_output_folder(
    fake: vertex.FakeVertex,
) -> None:
    name = create(fake, kind="hyperparameterTuningJobs")
    fake.set_state(name, vertex.RUNNING)
    trial = fake.start_trial(name, {"finetune-lr": 0.0005, "unfreeze-blocks": 3, "recipe": "guide"})
    assert fake.container_arguments(name, trial)[-6:] == [
        "train", "--recipe", "fast",
        "--finetune-lr=0.0005", "--unfreeze-blocks=3", "--recipe=guide",
    ]  # fmt: skip
    assert fake.environment(name, trial) == {
        "CLOUD_ML_TRIAL_ID": "1",
        "AIP_MODEL_DIR": "gs://kgg-test-bucket/runs/sweep-1/1/model/",
        "AIP_CHECKPOINT_DIR": "gs://kgg-test-bucket/runs/sweep-1/1/checkpoints/",
        "AIP_TENSORBOARD_LOG_DIR": "gs://kgg-test-bucket/runs/sweep-1/1/logs/",
    }
    single = create(fake)
    assert fake.environment(single)["AIP_MODEL_DIR"] == "gs://kgg-test-bucket/runs/run-1/model/"
