"""`python -m startup render|idle-check|wait-for-data`: wiring only; the logic lives in
render.py, idle.py and data_wait.py. `render` needs the project's infra/ package (laptop);
the other two run on the VM from the workload archive, which has no infra/."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# idle-check's exit codes, read by the startup script's idle_check function.
EXIT_SHUT_DOWN = 0
EXIT_STAY_UP = 10
# A documentation range (RFC 5737) for rendering a stack whose allowedSourceRanges is empty.
DOCUMENTATION_RANGE = "192.0.2.0/32"

RENDER_HELP = """\
Print the startup script exactly as `pulumi up` sends it for STACK: Pulumi.yaml defaults, then
Pulumi.<STACK>.yaml, then --set overrides, validated like `pulumi up` does.

Values the cloud assigns or that are secret (bucket, code archive and its hash, the Jupyter
password hash, the run id, the external IP) are NOT in the script: it reads them from the
VM's metadata server at boot, so nothing needs a placeholder.

allowedSourceRanges does not change the script; when the stack leaves it empty (as
Pulumi.dev.yaml does) the script is rendered anyway, with a note on stderr that `pulumi up`
will refuse the stack until it is set. Any other invalid setting exits 2 with the reason.

examples:
  python -m startup render --stack dev
  python -m startup render --stack dev --set gpuType=nvidia-l4 \\
      --set 'allowedSourceRanges=["203.0.113.7/32"]'
"""


def parse_override(text: str) -> tuple[str, Any]:
    """KEY=VALUE, the value parsed as JSON when it parses (numbers, booleans, lists), else a
    string."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"--set {text!r} is not KEY=VALUE")
    try:
        parsed: Any = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.strip(), parsed


def _render(args: argparse.Namespace) -> int:
    from infra.settings import SettingsError
    from infra.stack_config import settings_for_stack
    from startup.render import render_startup_script

    overrides = dict(args.set or [])
    try:
        try:
            settings = settings_for_stack(args.stack, overrides)
        except SettingsError as error:
            if "allowedSourceRanges is empty" not in str(error):
                raise
            # The script does not depend on the firewall ranges: render with a documentation
            # range and tell the user what `pulumi up` will say.
            settings = settings_for_stack(
                args.stack, {**overrides, "allowedSourceRanges": [DOCUMENTATION_RANGE]}
            )
            print(
                f"note: {error}\n(rendered anyway: the script does not depend on it)",
                file=sys.stderr,
            )
    except (SettingsError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    sys.stdout.write(render_startup_script(settings))
    return 0


def _idle_check(args: argparse.Namespace) -> int:
    from startup.idle import boot_time, decide, fetch_jupyter, read_job_state

    now = datetime.now(UTC)
    token = Path(args.token_file).read_text().strip() if args.token_file else ""
    status, kernels = fetch_jupyter(args.url, token, args.cafile)
    decision = decide(
        now=now,
        idle_minutes=args.idle_minutes,
        booted=boot_time(now),
        jupyter_status=status,
        kernels=kernels,
        job=read_job_state(args.job_state_file, args.job_active == "yes"),
    )
    print(decision.reason)
    return EXIT_SHUT_DOWN if decision.shutdown else EXIT_STAY_UP


def _wait_for_data(args: argparse.Namespace) -> int:
    from startup.data_wait import wait_for_data

    result = wait_for_data(
        args.bucket,
        args.data_path,
        state_file=args.state_file,
        stable_minutes=args.stable_minutes,
        poll_seconds=args.poll_seconds,
    )
    print(result.reason)
    return 0 if result.ready else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m startup",
        description="The VM's startup script: print it for a stack (render); the helpers it "
        "runs on the VM (idle-check, wait-for-data).",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    render = commands.add_parser(
        "render",
        help="print the startup script for a stack",
        description=RENDER_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    render.add_argument("--stack", default="dev", help="stack name (Pulumi.<stack>.yaml)")
    render.add_argument(
        "--set",
        action="append",
        type=parse_override,
        metavar="KEY=VALUE",
        help="override a config key (value parsed as JSON when it parses); repeatable",
    )
    render.set_defaults(handler=_render)

    idle = commands.add_parser(
        "idle-check",
        help="on the VM: exit 0 when it should power off, 10 when it should stay up",
    )
    idle.add_argument("--url", required=True, help="Jupyter base URL, e.g. https://127.0.0.1:8888")
    idle.add_argument("--token-file", help="file with the Jupyter API token")
    idle.add_argument("--cafile", help="Jupyter's (self-signed) certificate")
    idle.add_argument("--job-state-file", help="the training job's state file")
    idle.add_argument("--job-active", choices=("yes", "no"), default="no")
    idle.add_argument("--idle-minutes", type=int, required=True)
    idle.set_defaults(handler=_idle_check)

    wait = commands.add_parser(
        "wait-for-data", help="on the VM: block until the training data is complete"
    )
    wait.add_argument("--bucket", required=True)
    wait.add_argument("--data-path", required=True)
    wait.add_argument("--state-file", help="job state file (data changes count as activity)")
    wait.add_argument("--stable-minutes", type=int, default=5)
    wait.add_argument("--poll-seconds", type=float, default=30.0)
    wait.set_defaults(handler=_wait_for_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
