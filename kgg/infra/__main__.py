"""`python -m kgg.infra render`: the startup script for a stack, as `pulumi up` sends it, without
Pulumi or the cloud. It lives beside the stack loader (kgg/infra/stack_config.py), which `pulumi up`
uses too: infra/ uses startup/'s renderer, startup/ never imports infra/. What runs on the VM is
`python -m kgg.agent`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

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
  python -m kgg.infra render --stack dev
  python -m kgg.infra render --stack dev --set gpuType=nvidia-l4 \\
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
    from kgg.infra.settings import SettingsError
    from kgg.infra.stack_config import settings_for_stack
    from kgg.startup.render import render_startup_script

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kgg.infra",
        description="The stack, without Pulumi: print the VM's startup script (render).",
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

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
