"""Google's own description of an API, its discovery document, as a validator of request bodies
and the shaper of a fake's answers.

The documents ship inside the PyPI package google-api-python-client
(`googleapiclient/discovery_cache/documents/<api>.<version>.json`, read here through
importlib.resources, never copied). A body is checked the way Google's JSON transcoding reads
it (the proto3 JSON mapping: https://protobuf.dev/programming-guides/json/), then the way the
service checks the message:

- **parsing** (the API's "Invalid JSON payload received" / "Invalid value at" errors): unknown
  names; JSON types per the schema (`int64`/`uint64`/`int32` as a number or a decimal string,
  `double` as a number or a numeric string, `google-duration` as `"86400s"`, `google-datetime` as
  RFC 3339, `byte` as base64, booleans as true/false only); enum values from the document's
  `enum` lists; lists only where the schema says `array`. Both the JSON name and the proto field
  name are accepted, as the mapping says parsers must; `null` is an unset field.
- **the message**: a field the document marks read-only (`"readOnly": true`; eight fields of
  aiplatform.v1 say "Output only." in their description without the marker, so the description
  counts too) must not be sent, and a field whose description starts "Required." must be.
  Google's AIP-203 lets a service ignore output-only fields it is sent; the doubles refuse them,
  because a body carrying one is a bug in the caller.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any

DOCUMENTS_PACKAGE = "googleapiclient.discovery_cache.documents"

INT_RANGES = {
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}
# The proto3 JSON mapping's Duration: seconds with up to 9 fractional digits, then "s", within
# +-315,576,000,000 s.
DURATION = re.compile(r"^(-)?(\d+)(?:\.(\d{1,9}))?s$")
MAX_DURATION_SECONDS = 315_576_000_000
# RFC 3339 as the mapping writes and reads it: "1972-01-01T10:00:20.021Z" or with an offset.
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")
# The proto type names the transcoder prints in "Invalid value at 'x' (TYPE), value".
# Keyed by a property's ("type", "format"); either may be absent (None).
SCALAR_TYPE_NAMES: dict[tuple[str | None, str | None], str] = {
    ("string", None): "TYPE_STRING",
    ("string", "int64"): "TYPE_INT64",
    ("string", "uint64"): "TYPE_UINT64",
    ("integer", "int32"): "TYPE_INT32",
    ("integer", "uint32"): "TYPE_UINT32",
    ("number", "double"): "TYPE_DOUBLE",
    ("number", "float"): "TYPE_FLOAT",
    ("boolean", None): "TYPE_BOOL",
    ("string", "byte"): "TYPE_BYTES",
    ("string", "google-duration"): "type.googleapis.com/google.protobuf.Duration",
    ("string", "google-datetime"): "type.googleapis.com/google.protobuf.Timestamp",
    ("string", "google-fieldmask"): "type.googleapis.com/google.protobuf.FieldMask",
}

# Violation kinds: the first three are the transcoder's (parsing), the others the service's.
UNKNOWN, TYPE, ENUM, READ_ONLY, REQUIRED, VALUE = (
    "unknown",
    "type",
    "enum",
    "read-only",
    "required",
    "value",
)
PARSING_KINDS = frozenset({UNKNOWN, TYPE, ENUM})

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Violation:
    """One thing wrong with a body: where (JSON names and list indexes from the body's root),
    what kind, and a message naming the value and what the document expects."""

    path: Path
    kind: str
    message: str
    # The proto type the transcoder names in an "Invalid value" error (TYPE_INT64, ...).
    proto_type: str = ""
    value: Any = None

    @property
    def json_path(self) -> str:
        return render_path(self.path)

    def field(self, root: str = "") -> str:
        """The path as the API names it: proto field names (snake_case) under `root`, the
        request's body field (`custom_job`)."""
        return render_path(self.path, snake=True, root=root)

    def __str__(self) -> str:
        where = (*self.path, self.value) if self.kind == UNKNOWN else self.path
        return f"{render_path(where) or '(body)'}: {self.message}"


def render_path(path: Path, *, snake: bool = False, root: str = "") -> str:
    text = root
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            name = snake_case(part) if snake else part
            text += f".{name}" if text else name
    return text


def snake_case(name: str) -> str:
    """The proto field name of a JSON name (`jobSpec` -> `job_spec`)."""
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def is_read_only(prop: Mapping[str, Any]) -> bool:
    return bool(prop.get("readOnly")) or prop.get("description", "").startswith("Output only.")


def is_required(prop: Mapping[str, Any]) -> bool:
    return prop.get("description", "").startswith("Required.")


@functools.cache
def load(name: str) -> Document:
    """The discovery document `name` (e.g. "aiplatform.v1") of the installed package."""
    text = resources.files(DOCUMENTS_PACKAGE).joinpath(f"{name}.json").read_text()
    return Document(json.loads(text))


class Document:
    """One discovery document: its schemas, its methods, and checks of bodies against them."""

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.raw = raw
        self.name: str = raw["name"]
        self.version: str = raw["version"]
        self.revision: str = raw["revision"]
        self.schemas: Mapping[str, Mapping[str, Any]] = raw["schemas"]
        self._prefix = _common_prefix(self.schemas)

    def schema_id(self, name: str) -> str:
        """`name` as the document spells it: "CustomJob" is "GoogleCloudAiplatformV1CustomJob"."""
        if name in self.schemas:
            return name
        if self._prefix + name in self.schemas:
            return self._prefix + name
        raise KeyError(f"{self.name}.{self.version} has no schema {name!r}")

    def method(self, dotted: str) -> Mapping[str, Any]:
        """A method by its resource path: "projects.locations.customJobs.create"."""
        *resources_path, method = dotted.split(".")
        node: Mapping[str, Any] = self.raw
        for resource in resources_path:
            node = node["resources"][resource]
        return node["methods"][method]

    def validate(self, schema: str, body: Any, *, output: bool = False) -> list[Violation]:
        """Everything wrong with `body` as a `schema` message: parsing first, then, only when it
        parses (as the API checks), the message's read-only and required fields. `output=True`
        checks an answer instead of a request: read-only fields are then expected."""
        parsing: list[Violation] = []
        message: list[Violation] = []
        _Checker(self, parsing, message, output).message(self.schema_id(schema), body, ())
        return parsing or message

    def canonical(self, schema: str, body: Any) -> Any:
        """`body` (which validates) in the form the API answers with: JSON names, int64 and
        uint64 as strings, the other numbers as numbers, durations with 0, 3, 6 or 9 fractional
        digits, no nulls."""
        return _canonical_message(self, self.schema_id(schema), body)


def _common_prefix(schemas: Mapping[str, Any]) -> str:
    """The package prefix every schema id shares ("GoogleCloudAiplatformV1"), for short names."""
    counts: dict[str, int] = {}
    for name in schemas:
        match = re.match(r"^(Google[A-Z][a-z]+[A-Z][a-z]+V\d+(?:[a-z]+\d*)?)[A-Z]", name)
        if match:
            counts[match.group(1)] = counts.get(match.group(1), 0) + 1
    return max(counts, key=counts.__getitem__) if counts else ""


class _Checker:
    def __init__(
        self, document: Document, parsing: list[Violation], message: list[Violation], output: bool
    ) -> None:
        self.document = document
        self.parsing = parsing
        self.messages = message
        self.output = output

    def fail(self, path: Path, kind: str, text: str, proto_type: str = "", value: Any = None):
        target = self.parsing if kind in PARSING_KINDS else self.messages
        target.append(Violation(path, kind, text, proto_type, value))

    def message(self, schema_id: str, value: Any, path: Path) -> None:
        schema = self.document.schemas[schema_id]
        if not isinstance(value, dict):
            self.fail(
                path, TYPE, f"{_show(value)} is not an object ({schema_id})", "TYPE_MESSAGE", value
            )
            return
        self.fields(schema.get("properties", {}), value, path, schema_id)

    def fields(
        self, properties: Mapping[str, Any], value: dict, path: Path, schema_id: str
    ) -> None:
        by_proto_name = {snake_case(name): name for name in properties}
        seen: dict[str, str] = {}
        for key, item in value.items():
            name = key if key in properties else by_proto_name.get(key)
            if name is None:
                self.fail(path, UNKNOWN, f"no such field in {schema_id}", value=key)
                continue
            if name in seen:
                self.fail(path, UNKNOWN, f"names the same field as {seen[name]!r}", value=key)
                continue
            seen[name] = key
            if item is None:
                continue
            prop = properties[name]
            if is_read_only(prop) and not self.output:
                self.fail((*path, name), READ_ONLY, "is output only: the API sets it")
                continue
            self.value(prop, item, (*path, name))
        if self.output:
            return
        for name, prop in properties.items():
            present = any(value.get(k) is not None for k in (name, snake_case(name)))
            if is_required(prop) and not is_read_only(prop) and not present:
                self.fail((*path, name), REQUIRED, "is required")

    def value(self, prop: Mapping[str, Any], value: Any, path: Path) -> None:
        kind = prop.get("type")
        if "$ref" in prop:
            self.message(prop["$ref"], value, path)
        elif kind == "array":
            if not isinstance(value, list):
                self.fail(
                    path, TYPE, f"{_show(value)} is not a list", proto_type(prop["items"]), value
                )
                return
            for index, item in enumerate(value):
                if item is None:
                    self.fail((*path, index), TYPE, "null in a list", proto_type(prop["items"]))
                else:
                    self.value(prop["items"], item, (*path, index))
        elif kind == "object":
            if not isinstance(value, dict):
                self.fail(path, TYPE, f"{_show(value)} is not an object", "TYPE_MESSAGE", value)
            elif "additionalProperties" in prop:
                for key, item in value.items():
                    if item is None:
                        self.fail((*path, key), TYPE, "null as a map value")
                    else:
                        self.value(prop["additionalProperties"], item, (*path, key))
            elif "properties" in prop:
                self.fields(prop["properties"], value, path, "object")
        elif kind == "any":
            return
        else:
            problem = scalar_problem(prop, value)
            if problem is not None:
                self.fail(
                    path,
                    ENUM if "enum" in prop and isinstance(value, str) else TYPE,
                    problem,
                    proto_type(prop),
                    value,
                )


def scalar_problem(prop: Mapping[str, Any], value: Any) -> str | None:
    """Why `value` is not a JSON form of the scalar `prop` describes, or None."""
    kind, form = prop.get("type"), prop.get("format")
    if isinstance(value, dict | list):
        return f"{_show(value)} is not a {form or kind}"
    if "enum" in prop:
        return _enum_problem(prop["enum"], value)
    if kind == "boolean":
        return None if isinstance(value, bool) else f"{_show(value)} is not true or false"
    if form in INT_RANGES:
        return _int_problem(form, value)
    if kind == "number":
        return _number_problem(value)
    if not isinstance(value, str):
        return f"{_show(value)} is not a string"
    return _string_problem(form, value)


def _enum_problem(names: list[str], value: Any) -> str | None:
    if not isinstance(value, str):
        return f"{_show(value)} is not an enum name (one of {', '.join(names)})"
    if value not in names:
        return f"{value!r} is not one of {', '.join(names)}"
    return None


def _int_problem(form: str, value: Any) -> str | None:
    number = _integer(value)
    low, high = INT_RANGES[form]
    if number is None:
        return f"{_show(value)} is not an {form} (a whole number, or one as a string)"
    if not low <= number <= high:
        return f"{_show(value)} is outside the range of {form}"
    return None


def _number_problem(value: Any) -> str | None:
    """A JSON number, or the string forms proto3 JSON takes (a decimal, NaN, ±Infinity)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return f"{_show(value)} is not a number"
    if isinstance(value, str) and value not in ("NaN", "Infinity", "-Infinity"):
        try:
            float(value)
        except ValueError:
            return f"{_show(value)} is not a number"
    return None


def _string_problem(form: str | None, value: str) -> str | None:
    """A string's format: a duration, a timestamp, base64 bytes; any other string passes."""
    if form == "google-duration":
        match = DURATION.match(value)
        if match is None:
            return f"{value!r} is not a duration: seconds ending in 's', like \"86400s\""
        if int(match.group(2)) > MAX_DURATION_SECONDS:
            return f"{value!r} is longer than a duration may be"
    elif form == "google-datetime":
        if TIMESTAMP.match(value) is None or _timestamp(value) is None:
            return f'{value!r} is not an RFC 3339 time like "2026-12-01T10:00:00Z"'
    elif form == "byte":
        try:
            base64.b64decode(value.replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            return f"{value!r} is not base64"
    return None


def _integer(value: Any) -> int | None:
    """The integer a JSON int field holds: a number without a fraction, or a decimal string."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value):
        return int(value)
    return None


def _timestamp(value: str) -> datetime | None:
    text = re.sub(r"\.(\d{1,6})\d*", r".\1", value).replace("Z", "+00:00")
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def proto_type(prop: Mapping[str, Any]) -> str:
    """The proto type the transcoder names for a property in its "Invalid value" errors."""
    if "$ref" in prop or prop.get("type") == "object":
        return "TYPE_MESSAGE"
    if "enum" in prop:
        return "TYPE_ENUM"
    return SCALAR_TYPE_NAMES.get((prop.get("type"), prop.get("format")), "TYPE_STRING")


def _show(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, dict | list) else type(value).__name__


def _canonical_message(document: Document, schema_id: str, body: Mapping[str, Any]) -> Any:
    return _canonical_fields(document, document.schemas[schema_id].get("properties", {}), body)


def _canonical_fields(
    document: Document, properties: Mapping[str, Any], body: Mapping[str, Any]
) -> dict[str, Any]:
    by_proto_name = {snake_case(name): name for name in properties}
    answer = {}
    for key, item in body.items():
        if item is None:
            continue
        name = key if key in properties else by_proto_name[key]
        answer[name] = _canonical_value(document, properties[name], item)
    return answer


def _canonical_value(document: Document, prop: Mapping[str, Any], value: Any) -> Any:
    kind, form = prop.get("type"), prop.get("format")
    if "$ref" in prop:
        return _canonical_message(document, prop["$ref"], value)
    if kind == "array":
        return [_canonical_value(document, prop["items"], item) for item in value]
    if kind == "object":
        if "additionalProperties" in prop:
            extra = prop["additionalProperties"]
            return {k: _canonical_value(document, extra, v) for k, v in value.items()}
        if "properties" in prop:
            return _canonical_fields(document, prop["properties"], value)
        return value
    if "enum" in prop or kind in ("any", "boolean"):
        return value
    if form in ("int64", "uint64"):
        return str(_integer(value))
    if form in ("int32", "uint32"):
        return _integer(value)
    if kind == "number":
        number = float(value)
        if not math.isfinite(number):
            return "NaN" if math.isnan(number) else ("Infinity" if number > 0 else "-Infinity")
        return number
    if form == "google-duration":
        return canonical_duration(value)
    return value


def canonical_duration(text: str) -> str:
    """A duration as the API writes it: "86400s", "1.500s" (0, 3, 6 or 9 fractional digits)."""
    match = DURATION.match(text)
    assert match is not None, text
    sign, seconds, fraction = match.group(1) or "", match.group(2), match.group(3) or ""
    nanos = fraction.ljust(9, "0")
    for digits in (0, 3, 6):
        if nanos[digits:] == "0" * (9 - digits):
            nanos = nanos[:digits]
            break
    return f"{sign}{int(seconds)}{'.' + nanos if nanos else ''}s"
