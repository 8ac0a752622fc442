"""Vertex AI's checks of a job body that parses (tests/fake_aiplatform.py answers them in the
API's "List of found errors" form): only rules a sentence of the aiplatform v1 discovery document
states (each quoted beside its check), plus the accelerator pairing whose error text users have
reported from the live API and Dynamic Workload Scheduler's requirements from its own page."""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from typing import Any

from tests import discovery
from tests.discovery import Violation

DOCUMENT = "aiplatform.v1"


def document() -> discovery.Document:
    """The aiplatform v1 discovery document of the installed google-api-python-client."""
    return discovery.load(DOCUMENT)


LABEL_TEXT = re.compile(r"^[\w-]*$")
C_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
UNSPECIFIED = "ACCELERATOR_TYPE_UNSPECIFIED"
ACCELERATOR_PAIR = "Both `accelerator_type` and `accelerator_count` should be specified or none."


def service_problems(schema_id: str, body: Mapping[str, Any]) -> list[Violation]:
    """Vertex's checks of a job that parses, each from a sentence of the document (quoted)."""
    body = document().canonical(schema_id, body)
    found: list[Violation] = []

    def fail(path: discovery.Path, text: str) -> None:
        found.append(Violation(path, discovery.VALUE, text))

    # "The name can be up to 128 characters long"
    if len(body.get("displayName", "")) > 128:
        fail(("displayName",), "is longer than 128 characters")
    # "Label keys and values can be no longer than 64 characters (Unicode codepoints), can only
    # contain lowercase letters, numeric characters, underscores and dashes."
    for key, value in body.get("labels", {}).items():
        for text in (key, value):
            if len(text) > 64 or not LABEL_TEXT.match(text) or text != text.lower():
                fail(
                    ("labels", key),
                    f"label {text!r}: at most 64 lowercase letters, digits, underscores and dashes",
                )
        if not key:
            fail(("labels",), "a label key is empty")
    spec_name = "trialJobSpec" if schema_id.endswith("HyperparameterTuningJob") else "jobSpec"
    if spec_name in body:
        found += _job_spec_problems(body[spec_name], (spec_name,))
        found += _flex_start_problems(body[spec_name], (spec_name,))
    if "studySpec" in body:
        found += _study_problems(body["studySpec"], ("studySpec",))
        for name in ("maxTrialCount", "parallelTrialCount"):
            if body.get(name, 0) < 1:
                fail((name,), "must be at least 1")
        if body.get("maxFailedTrialCount", 0) < 0:
            fail(("maxFailedTrialCount",), "must not be negative")
    return found


def _job_spec_problems(spec: Mapping[str, Any], path: discovery.Path) -> list[Violation]:
    found: list[Violation] = []
    pools = spec.get("workerPoolSpecs", [])
    # "All worker pools except the first one are optional and can be skipped by providing an
    # empty value."
    if not pools or not pools[0]:
        found.append(
            Violation(
                (*path, "workerPoolSpecs"), discovery.VALUE, "the first worker pool is required"
            )
        )
    for index, pool in enumerate(pools):
        if not pool:
            continue
        here = (*path, "workerPoolSpecs", index)
        machine = pool.get("machineSpec", {})
        # "For BatchPredictionJob or as part of WorkerPoolSpec this field is required."
        if not machine.get("machineType"):
            found.append(
                Violation((*here, "machineSpec", "machineType"), discovery.REQUIRED, "is required")
            )
        has_type = machine.get("acceleratorType", UNSPECIFIED) != UNSPECIFIED
        if has_type != bool(machine.get("acceleratorCount")):
            found.append(
                Violation(
                    (*here, "machineSpec", "acceleratorType"), discovery.VALUE, ACCELERATOR_PAIR
                )
            )
        tasks = [name for name in ("containerSpec", "pythonPackageSpec") if name in pool]
        if len(tasks) != 1:
            found.append(
                Violation(
                    here, discovery.VALUE, "needs one task: containerSpec or pythonPackageSpec"
                )
            )
        for task in tasks:
            env = pool[task].get("env", [])
            # "Maximum limit is 100." / "Must be a valid C identifier."
            if len(env) > 100:
                found.append(
                    Violation(
                        (*here, task, "env"), discovery.VALUE, "holds more than 100 variables"
                    )
                )
            for position, variable in enumerate(env):
                if not C_IDENTIFIER.match(variable.get("name", "")):
                    found.append(
                        Violation(
                            (*here, task, "env", position, "name"),
                            discovery.VALUE,
                            "is not a valid C identifier",
                        )
                    )
    prefix = spec.get("baseOutputDirectory", {}).get("outputUriPrefix")
    # "Google Cloud Storage URI to output directory."
    if prefix is not None and not prefix.startswith("gs://"):
        found.append(
            Violation(
                (*path, "baseOutputDirectory", "outputUriPrefix"),
                discovery.VALUE,
                "is not a gs:// URI",
            )
        )
    return found


# cloud.google.com/vertex-ai/docs/training/schedule-jobs-dws, "Requirements" (checked 2026-12):
# "Your custom training job requests L4, A100, H100, H200, or B200 GPUs." and "has a maximum
# timeout of 7 days or less."
FLEX_START_GPUS = ("NVIDIA_L4", "NVIDIA_TESLA_A100", "NVIDIA_A100_80GB", "NVIDIA_H100_80GB",
                   "NVIDIA_H100_MEGA_80GB", "NVIDIA_H200_141GB", "NVIDIA_B200")  # fmt: skip
FLEX_START_MAX_SECONDS = 7 * 24 * 3600


def _flex_start_problems(spec: Mapping[str, Any], path: discovery.Path) -> list[Violation]:
    scheduling = spec.get("scheduling", {})
    if scheduling.get("strategy") != "FLEX_START":
        return []
    found = []
    for index, pool in enumerate(spec.get("workerPoolSpecs", [])):
        accelerator = (pool or {}).get("machineSpec", {}).get("acceleratorType", UNSPECIFIED)
        if pool and accelerator not in FLEX_START_GPUS:
            here = (*path, "workerPoolSpecs", index, "machineSpec", "acceleratorType")
            found.append(Violation(here, discovery.VALUE, "FLEX_START needs an L4, A100, H100, "
                                   f"H200 or B200, not {accelerator}"))  # fmt: skip
    timeout = scheduling.get("timeout")
    if timeout is not None and float(str(timeout).removesuffix("s")) > FLEX_START_MAX_SECONDS:
        found.append(Violation((*path, "scheduling", "timeout"), discovery.VALUE,
                               "FLEX_START allows a timeout of 7 days at most"))  # fmt: skip
    return found


VALUE_SPECS = ("doubleValueSpec", "integerValueSpec", "categoricalValueSpec", "discreteValueSpec")
LOG_SCALES = ("UNIT_LOG_SCALE", "UNIT_REVERSE_LOG_SCALE")


def _study_problems(study: Mapping[str, Any], path: discovery.Path) -> list[Violation]:
    found = _id_problems(study, path)
    for index, parameter in enumerate(study.get("parameters", [])):
        found += _parameter_problems(parameter, (*path, "parameters", index))
    # "To use grid search, all parameters must be INTEGER, CATEGORICAL, or DISCRETE."
    if study.get("algorithm") == "GRID_SEARCH":
        for index, parameter in enumerate(study.get("parameters", [])):
            if "doubleValueSpec" in parameter:
                found.append(
                    _value((*path, "parameters", index), "GRID_SEARCH takes no DOUBLE parameter")
                )
    return found


def _value(where: discovery.Path, text: str) -> Violation:
    return Violation(where, discovery.VALUE, text)


def _id_problems(study: Mapping[str, Any], path: discovery.Path) -> list[Violation]:
    """Metric and parameter ids: "Must not contain whitespaces and must be unique amongst all
    MetricSpecs." """
    found: list[Violation] = []
    for group, key in (("metrics", "metricId"), ("parameters", "parameterId")):
        ids = [item.get(key, "") for item in study.get(group, [])]
        for index, name in enumerate(ids):
            if re.search(r"\s", name) or ids.count(name) > 1:
                found.append(
                    _value((*path, group, index, key), f"{name!r} has whitespace or is not unique")
                )
        if not ids:
            found.append(_value((*path, group), "is empty"))
    return found


def _parameter_problems(parameter: Mapping[str, Any], here: discovery.Path) -> list[Violation]:
    specs = [name for name in VALUE_SPECS if name in parameter]
    if len(specs) != 1:
        return [_value(here, f"needs one of {', '.join(VALUE_SPECS)}")]
    kind = specs[0]
    spec, scale = parameter[kind], parameter.get("scaleType")
    if kind == "categoricalValueSpec":
        return _categorical_problems(spec, scale, here)
    found: list[Violation] = []
    if kind == "discreteValueSpec":
        values = spec.get("values", [])
        # "The list should be in increasing order and at least 1e-10 apart ... should not
        # contain more than 1,000 values."
        if not values or len(values) > 1000:
            found.append(_value((*here, kind, "values"), "must hold 1 to 1,000 values"))
        if any(b - a < 1e-10 for a, b in itertools.pairwise(values)):
            found.append(_value((*here, kind, "values"), "must increase, at least 1e-10 apart"))
        low = min(values, default=1)
    else:
        low, high = float(spec["minValue"]), float(spec["maxValue"])
        if low > high:
            found.append(_value((*here, kind), f"minValue {low:g} is above maxValue {high:g}"))
    # "The entire feasible space must be strictly positive."
    if scale in LOG_SCALES and low <= 0:
        found.append(_value((*here, "scaleType"), f"{scale} needs a feasible space above 0"))
    return found


def _categorical_problems(
    spec: Mapping[str, Any], scale: Any, here: discovery.Path
) -> list[Violation]:
    found: list[Violation] = []
    if scale is not None:  # "Leave unset for `CATEGORICAL` parameters."
        found.append(_value((*here, "scaleType"), "must be unset for a categorical parameter"))
    if not spec.get("values"):
        found.append(_value((*here, "categoricalValueSpec", "values"), "is empty"))
    return found
