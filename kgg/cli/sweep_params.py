"""`kgg sweep --param NAME=SPEC`: the parameters a sweep searches, as Vertex AI's
StudySpec.ParameterSpec bodies. NAME is a `train` option without its dashes (each trial gets
`--NAME=<value>`); SPEC says what values it takes:

    finetune-lr=log:1e-5..1e-2       a float range searched on a log scale (UNIT_LOG_SCALE)
    head-lr=1e-4..1e-2               a float range, linear (or linear:1e-4..1e-2)
    unfreeze-blocks=1..3             a whole-number range (int:1..3 says so; log:1..64 too)
    head-lr=discrete:1e-4,1e-3       these numbers only (bare 1e-4,1e-3 means the same; an int
                                     option's list, batch-size=16,32,64, goes as categorical
                                     strings so a trial gets exactly --batch-size=16)
    recipe=cat:fast,guide            these words only, for an option with choices (or fast,guide)

What an option takes comes from the job's own `train` parser (`option_kinds`): its type (float,
int) or its choices, so a spec the job would refuse is refused here first, in one line naming
the value and the fix.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from kgg.cli.vertex_spec import SpecError

FLOAT, INT, CHOICE = "float", "int", "choice"
PREFIXES = ("log", "linear", "int", "discrete", "cat")
# Options of `train` a sweep cannot vary: where the run reads and writes, and how fast it copies.
NOT_SWEPT = frozenset({"data", "out", "cache-dir", "workers"})
MAX_DISCRETE = 1000  # "This list should not contain more than 1,000 values." (the document)


@dataclass(frozen=True)
class OptionKind:
    """What a `train` option takes: a float, an int, or one of `choices`."""

    kind: str
    choices: tuple[str, ...] = ()


def option_kinds(
    parser: argparse.ArgumentParser, exclude: Iterable[str] = NOT_SWEPT
) -> dict[str, OptionKind]:
    """The options of `parser` a sweep can vary, by name without dashes: those with a float or
    int type or with choices (flags, paths and free text are not swept)."""
    kinds = {}
    excluded = set(exclude)
    for action in parser._actions:
        long_names = [s for s in action.option_strings if s.startswith("--")]
        if not long_names or action.nargs == 0:
            continue
        name = long_names[0].removeprefix("--")
        if name in excluded:
            continue
        if action.choices is not None:
            kinds[name] = OptionKind(CHOICE, tuple(str(c) for c in action.choices))
        elif action.type is float:
            kinds[name] = OptionKind(FLOAT)
        elif action.type is int:
            kinds[name] = OptionKind(INT)
    return kinds


def parse_params(texts: Sequence[str], options: Mapping[str, OptionKind]) -> list[dict[str, Any]]:
    """Every --param, in order; a name given twice is refused."""
    specs = [parse_param(text, options) for text in texts]
    seen: set[str] = set()
    for spec in specs:
        if spec["parameterId"] in seen:
            raise SpecError(f"--param {spec['parameterId']} is given twice; give it once")
        seen.add(spec["parameterId"])
    return specs


def parse_param(text: str, options: Mapping[str, OptionKind]) -> dict[str, Any]:
    """One `NAME=SPEC` as a StudySpec.ParameterSpec."""
    name, equals, spec = text.partition("=")
    name, spec = name.strip().removeprefix("--"), spec.strip()
    if not equals or not name or not spec:
        raise SpecError(f"--param {text!r}: expected NAME=SPEC, like finetune-lr=log:1e-5..1e-2")
    if name not in options:
        raise SpecError(
            f"--param {text}: {name!r} is not a train option a sweep can vary; use "
            f"one of {', '.join(sorted(options))}"
        )
    option = options[name]
    prefix, colon, rest = spec.partition(":")
    if colon and not re.fullmatch(r"[-+\d.eE]*", prefix):
        if prefix not in PREFIXES:
            raise SpecError(
                f"--param {text}: unknown kind {prefix!r}; use "
                f"{', '.join(p + ':' for p in PREFIXES)} or none"
            )
    else:
        prefix, rest = "", spec
    fail = _failer(text)
    if option.kind == CHOICE:
        if prefix not in ("", "cat") or ".." in rest:
            choices = ",".join(option.choices)
            fail(f"{name} takes one of {', '.join(option.choices)}: write {name}=cat:{choices}")
        return _categorical(name, rest, option, fail)
    if prefix == "cat":
        fail(f"{name} is a number: write {name}=discrete:{rest}")
    if ".." in rest:
        if prefix == "discrete":
            fail(f"discrete: takes a list: write {name}=discrete:V1,V2,... or {name}={rest}")
        return _range(name, prefix, rest, option, fail)
    if prefix in ("log", "linear", "int"):
        fail(f"{prefix}: takes a range LOW..HIGH, like {name}={prefix}:{_example(option)}")
    return _discrete(name, rest, option, fail)


def fixed_conflicts(params: Sequence[Mapping[str, Any]], train_args: Sequence[str]) -> None:
    """A swept option must not also be fixed among the train options: Vertex puts the trial's
    value after them and the job would take whichever comes last, silently."""
    for spec in params:
        flag = f"--{spec['parameterId']}"
        if any(arg == flag or arg.startswith(flag + "=") for arg in train_args):
            raise SpecError(
                f"{flag} is both fixed (in the train options) and swept (--param "
                f"{spec['parameterId']}=...): drop one"
            )


Fail = Callable[[str], NoReturn]


def _failer(text: str) -> Fail:
    def fail(reason: str) -> NoReturn:
        raise SpecError(f"--param {text}: {reason}")

    return fail


def _example(option: OptionKind) -> str:
    return "1..3" if option.kind == INT else "1e-5..1e-2"


def _number(text: str, option: OptionKind, name: str, fail: Fail) -> float | int:
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        fail(f"{text!r} is not a number")
    if not math.isfinite(value):
        fail(f"{text!r} is not a finite number")
    if option.kind == INT:
        if not value.is_integer():
            fail(f"{name} takes whole numbers, not {text}")
        return int(value)
    return value


def _range(name: str, prefix: str, rest: str, option: OptionKind, fail: Fail) -> dict[str, Any]:
    low_text, _, high_text = rest.partition("..")
    if prefix == "int" and option.kind == FLOAT:
        fail(f"{name} takes a float: write {name}={rest}")
    low, high = (_number(t, option, name, fail) for t in (low_text, high_text))
    if low == high:
        fail(f"a range needs two ends; to fix {name}, pass --{name} {_show(low)}")
    if low > high:
        kind = f"{prefix}:" if prefix else ""
        fail(f"the range must go up: write {name}={kind}{_show(high)}..{_show(low)}")
    log = prefix == "log"
    if log and low <= 0:
        fail(f"a log range must lie above 0, like {name}=log:{_example(option)}")
    scale = "UNIT_LOG_SCALE" if log else "UNIT_LINEAR_SCALE"
    if option.kind == INT:
        # int64 fields go as decimal strings, as the API writes them.
        ints = {"minValue": str(low), "maxValue": str(high)}
        return {"parameterId": name, "integerValueSpec": ints, "scaleType": scale}
    doubles = {"minValue": float(low), "maxValue": float(high)}
    return {"parameterId": name, "doubleValueSpec": doubles, "scaleType": scale}


def _discrete(name: str, rest: str, option: OptionKind, fail: Fail) -> dict[str, Any]:
    """Listed numbers. A float option's are a DISCRETE parameter; an int option's go as
    CATEGORICAL strings, so the trial gets `--batch-size=16` exactly (how Vertex writes a
    DISCRETE value, a double, on the command line is not documented: `16.0` would not parse)."""
    values = [_number(t, option, name, fail) for t in rest.split(",")]
    ordered = sorted(values)
    if len(set(ordered)) != len(ordered):
        fail("a value is listed twice")
    if len(ordered) < 2:
        fail(f"a sweep needs two values or more; to fix {name}, pass --{name} {_show(values[0])}")
    if len(ordered) > MAX_DISCRETE:
        fail(f"{len(ordered)} values: Vertex takes at most {MAX_DISCRETE}")
    if option.kind == INT:
        return {"parameterId": name, "categoricalValueSpec": {"values": [str(v) for v in ordered]}}
    return {
        "parameterId": name,
        "discreteValueSpec": {"values": [float(v) for v in ordered]},
        "scaleType": "UNIT_LINEAR_SCALE",
    }


def _categorical(name: str, rest: str, option: OptionKind, fail: Fail) -> dict[str, Any]:
    values = [v.strip() for v in rest.split(",")]
    wrong = [v for v in values if v not in option.choices]
    if wrong:
        fail(f"{name} takes {', '.join(option.choices)}; {', '.join(map(repr, wrong))} is not one")
    if len(set(values)) != len(values):
        fail("a value is listed twice")
    if len(values) < 2:
        fail(f"a sweep needs two values or more; to fix {name}, pass --{name} {values[0]}")
    return {"parameterId": name, "categoricalValueSpec": {"values": values}}


def _show(value: float | int) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
