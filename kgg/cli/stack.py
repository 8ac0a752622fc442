"""What the laptop commands take from the current Pulumi stack when a flag does not say it: the
bucket, the VM's group, the data path, the stack's name and all its outputs (`pulumi stack output`,
`config get`), and the two flags that override them."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kgg.common.errors import UserError

STACK_BUCKET_OUTPUT = "bucketName"
STACK_GROUP_OUTPUT = "instanceGroup"
STACK_DATA_PATH_KEY = "dataPath"
PROJECT_ROOT = Path(__file__).resolve().parents[2]  # where Pulumi.yaml is


class StackValueError(UserError, RuntimeError):
    """No flag and no Pulumi stack output to take a value (bucket, group) from."""


Runner = Callable[..., subprocess.CompletedProcess[str]]
Which = Callable[[str], str | None]


def _pulumi(argv: list[str], run: Runner) -> subprocess.CompletedProcess[str]:
    """Runs the pulumi CLI in the project folder (where Pulumi.yaml is), output captured."""
    cwd = PROJECT_ROOT if (PROJECT_ROOT / "Pulumi.yaml").is_file() else None
    return run(["pulumi", *argv], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def stack_output(
    output: str, flag: str, fix: str, which: Which = shutil.which, run: Runner = subprocess.run
) -> str:
    """The current Pulumi stack's `output`, for a command run without `flag`."""
    if which("pulumi") is None:
        raise StackValueError(f"no {flag} given and the pulumi CLI is not installed; {fix}")
    try:
        result = _pulumi(["stack", "output", output], run)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise StackValueError(f"`pulumi stack output {output}` failed ({error}); {fix}") from error
    value = result.stdout.strip()
    if result.returncode != 0 or not value:
        detail = result.stderr.strip().splitlines()[-1:] or ["no output"]
        raise StackValueError(
            f"`pulumi stack output {output}` gave nothing ({detail[0]}); "
            f"select the stack (`pulumi stack select dev`) after `pulumi up`, or {fix}"
        )
    return value


def resolve_bucket(
    explicit: str | None, which: Which = shutil.which, run: Runner = subprocess.run
) -> str:
    """`--bucket`, else the current Pulumi stack's `bucketName` output."""
    if explicit:
        return explicit.removeprefix("gs://").strip("/")
    fix = "pass --bucket BUCKET (the bucket name `pulumi up` printed as bucketName)"
    return stack_output(STACK_BUCKET_OUTPUT, "--bucket", fix, which, run)


def resolve_group(
    explicit: str | None, which: Which = shutil.which, run: Runner = subprocess.run
) -> str:
    """`--group`, else the current Pulumi stack's `instanceGroup` output."""
    if explicit:
        return explicit
    fix = (
        "pass --group projects/PROJECT/regions/REGION/instanceGroupManagers/NAME "
        "(what `pulumi up` printed as instanceGroup)"
    )
    return stack_output(STACK_GROUP_OUTPUT, "--group", fix, which, run)


def stack_data_path(which: Which = shutil.which, run: Runner = subprocess.run) -> str | None:
    """The stack's `dataPath` when it was set (`pulumi config get` fails for a default)."""
    if which("pulumi") is None:
        return None
    try:
        result = _pulumi(["config", "get", STACK_DATA_PATH_KEY], run)
    except (OSError, subprocess.TimeoutExpired):
        return None
    value = result.stdout.strip()
    return value if result.returncode == 0 and value else None


def stack_name(fix: str, which: Which = shutil.which, run: Runner = subprocess.run) -> str:
    """The current Pulumi stack's name (`dev`), for a default named after it."""
    if which("pulumi") is None:
        raise StackValueError(f"no --name given and the pulumi CLI is not installed; {fix}")
    result = _pulumi(["stack", "--show-name"], run)
    name = result.stdout.strip()
    if result.returncode != 0 or not name:
        raise StackValueError(f"`pulumi stack --show-name` gave nothing; {fix}")
    return name


def add_bucket_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bucket",
        help="bucket name (default: the Pulumi stack output bucketName)",
    )


def add_group_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--group",
        help=(
            "the VM's group, projects/PROJECT/regions/REGION/instanceGroupManagers/NAME "
            "(default: the Pulumi stack output instanceGroup)"
        ),
    )


def add_group_command(
    subparsers: argparse._SubParsersAction,
    name: str,
    run: Callable[[argparse.Namespace], int],
    summary: str,
    description: str,
) -> argparse.ArgumentParser:
    """A command on the VM's group: its parser, with --group."""
    parser = subparsers.add_parser(name, help=summary, description=description)
    add_group_option(parser)
    parser.set_defaults(func=run)
    return parser


def stack_outputs(which: Which = shutil.which, run: Runner = subprocess.run) -> dict[str, Any]:
    """All the current stack's outputs (`pulumi stack output --json`); {} without pulumi or a
    stack, so flags alone still work (`kgg submit`, `sweep`, and the Vertex view of `runs`)."""
    if which("pulumi") is None:
        return {}
    try:
        result = _pulumi(["stack", "output", "--json"], run)
        outputs = json.loads(result.stdout) if result.returncode == 0 else {}
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return {}
    return outputs if isinstance(outputs, dict) else {}
