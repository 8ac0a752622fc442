"""Runs a Cloud Workflows definition the way Workflows does, for the subset of its syntax the
program's stop workflow uses (https://cloud.google.com/workflows/docs/reference/syntax): `main`
with `params`, steps in order, `switch` with `condition` and `next`, `call: http.get|http.post`
with `url`, `query` and `auth: {type: OAuth2}` (the workflow's own account's token), `result`,
and `return`; expressions `${...}` with names, `.` access, `map.get`, `==`, `!=`, literals.
Anything else raises UnsupportedSyntax, so a changed definition fails its tests instead of being
half-run."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

HttpCall = Callable[[str, str, dict[str, Any], bool], tuple[int, Any]]
_TOKEN = re.compile(r'\s*("(?:[^"\\]|\\.)*"|==|!=|\(|\)|,|[A-Za-z_][A-Za-z0-9_.]*|-?\d+)')


class UnsupportedSyntax(ValueError):
    pass


class WorkflowError(RuntimeError):
    """What fails an execution (an HTTP error from a call), as Workflows reports it."""

    def __init__(self, payload: dict[str, Any]) -> None:
        super().__init__(json.dumps(payload))
        self.payload = payload


@dataclass
class Outcome:
    state: str  # SUCCEEDED | FAILED
    result: Any = None
    error: dict[str, Any] | None = None


def evaluate(expression: str, variables: dict[str, Any]) -> Any:
    tokens = [t for t in _TOKEN.findall(expression) if t]
    if "".join(tokens) != re.sub(r"\s+", "", expression):
        raise UnsupportedSyntax(f"expression {expression!r}")
    parser = _Parser(expression, tokens, variables)
    left = parser.value()
    if parser.more():
        op = parser.take()
        right = parser.value()
        if op not in ("==", "!=") or parser.more():
            raise UnsupportedSyntax(f"expression {expression!r}")
        return (left == right) == (op == "==")
    return left


@dataclass
class _Parser:
    """Reads an expression's tokens left to right: literals, `map.get(m, k)`, dotted names."""

    expression: str
    tokens: list[str]
    variables: dict[str, Any]
    position: int = 0

    def more(self) -> bool:
        return self.position < len(self.tokens)

    def take(self) -> str:
        self.position += 1
        return self.tokens[self.position - 1]

    def value(self) -> Any:
        token = self.take()
        if token.startswith('"'):
            return json.loads(token)
        if re.fullmatch(r"-?\d+", token):
            return int(token)
        if token in ("true", "false", "null"):
            return {"true": True, "false": False, "null": None}[token]
        if token == "map.get":
            return self.map_get()
        return self.lookup(token)

    def map_get(self) -> Any:
        """`map.get(m, k)`: None for a missing key or a non-map, a TypeError for a null map."""
        if self.take() != "(":
            raise UnsupportedSyntax(self.expression)
        mapping, _, key = self.value(), self.take(), self.value()
        if self.take() != ")":
            raise UnsupportedSyntax(self.expression)
        if mapping is None:
            raise WorkflowError({"message": "map.get: map is null", "tags": ["TypeError"]})
        return mapping.get(key) if isinstance(mapping, dict) else None

    def lookup(self, token: str) -> Any:
        """A variable and its attributes (`a.b.c`): a KeyError for any that is missing."""
        first, *attributes = token.split(".")
        if first not in self.variables:
            raise WorkflowError({"message": f"KeyError: {first}", "tags": ["KeyError"]})
        current = self.variables[first]
        for attribute in attributes:
            if not isinstance(current, dict) or attribute not in current:
                raise WorkflowError({"message": f"KeyError: {attribute}", "tags": ["KeyError"]})
            current = current[attribute]
        return current


def _resolve(item: Any, variables: dict[str, Any]) -> Any:
    if isinstance(item, str) and item.startswith("${") and item.endswith("}"):
        return evaluate(item[2:-1], variables)
    if isinstance(item, dict):
        return {key: _resolve(value, variables) for key, value in item.items()}
    if isinstance(item, list):
        return [_resolve(value, variables) for value in item]
    return item


def run(source: str, argument: Any, http: HttpCall) -> Outcome:
    """Executes `source` with the runtime `argument`; `http(method, url, query, oauth2)` makes a
    call as the workflow's account and returns (status, parsed body)."""
    definition = yaml.safe_load(source)
    if set(definition) != {"main"} or set(definition["main"]) - {"params", "steps"}:
        raise UnsupportedSyntax("only a `main` workflow with params and steps")
    params = definition["main"].get("params") or []
    variables: dict[str, Any] = {params[0]: argument} if params else {}
    steps = [next(iter(step.items())) for step in definition["main"]["steps"]]
    names = [name for name, _ in steps]
    index = 0
    try:
        while index < len(steps):
            name, body = steps[index]
            index += 1
            unknown = set(body) - {"switch", "call", "args", "result", "return", "next"}
            if unknown:
                raise UnsupportedSyntax(f"step {name}: {sorted(unknown)}")
            if "switch" in body:
                for case in body["switch"]:
                    if _resolve(case["condition"], variables) is True:
                        index = names.index(case["next"])
                        break
            elif "call" in body:
                if body["call"] not in ("http.get", "http.post"):
                    raise UnsupportedSyntax(f"step {name}: call {body['call']}")
                args = _resolve(body.get("args") or {}, variables)
                if set(args) - {"url", "query", "auth"}:
                    raise UnsupportedSyntax(f"step {name}: args {sorted(args)}")
                oauth2 = (args.get("auth") or {}).get("type") == "OAuth2"
                method = body["call"].split(".")[1].upper()
                status, answer = http(method, args["url"], args.get("query") or {}, oauth2)
                if status >= 400:
                    raise WorkflowError({
                        "message": f"HTTP server responded with error code {status}",
                        "code": status, "body": answer, "tags": ["HttpError"],
                    })  # fmt: skip
                if "result" in body:
                    variables[body["result"]] = {"code": status, "body": answer}
            elif "return" in body:
                return Outcome("SUCCEEDED", _resolve(body["return"], variables))
            if "next" in body:
                index = names.index(body["next"])
    except WorkflowError as error:
        return Outcome("FAILED", error=error.payload)
    return Outcome("SUCCEEDED", None)
