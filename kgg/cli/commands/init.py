"""`kgg init`: the stack's configuration in one guided step.

Project and region come from the flags or gcloud's config, the notebook's allowed range from
`--allow` or this machine's public address, the GPU from `--gpu-type` or what the stack has. The
checks of kgg/cli/preflight.py run first; then the plain keys go into `Pulumi.<stack>.yaml`
(kgg/cli/stack_file.py) and the Jupyter password, prompted twice, into
`pulumi config set --secret` on stdin: only the Pulumi CLI encrypts with the stack's secrets
provider, and a password in argv would show in every process listing.

Importing it is cheap (the VM imports every command's parser): the rest loads when it runs.
"""

from __future__ import annotations

import argparse
import ipaddress
import shutil
import subprocess
import sys
from getpass import getpass
from pathlib import Path

from kgg.common.contract import EXIT_USAGE
from kgg.common.errors import UserError

# The service settings.MY_IP_COMMAND asks: it answers the caller's IPv4 address as plain text.
CHECKIP_URL = "https://checkip.amazonaws.com"
LOOKUP_TIMEOUT_SECONDS = 10
GCLOUD_TIMEOUT_SECONDS = 30
PULUMI_INSTALL = "https://www.pulumi.com/docs/iac/download-install/"
PASSWORD_KEY = "jupyterPassword"
PASSWORD_ATTEMPTS = 3


class InitError(UserError):
    """Something `kgg init` cannot do as asked; the message says what to do instead."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "init",
        help="configure a stack in one step: project, region, your address, GPU, password",
        description=(
            "Writes the stack's plain settings into Pulumi.<STACK>.yaml (keeping its other keys) "
            "and its Jupyter password as a Pulumi secret, after checking your credentials, the "
            "APIs the stack uses and the GPU quota. Run it in the checkout; then `pulumi up`."
        ),
    )
    parser.add_argument("--stack", default="dev", help="stack name (default dev)")
    parser.add_argument("--project", help="GCP project id (default: gcloud's `project`)")
    parser.add_argument("--region", help="GCP region (default: gcloud's `compute/region`)")
    parser.add_argument(
        "--allow",
        action="append",
        metavar="CIDR",
        help="who may reach the notebook, e.g. 203.0.113.7/32; repeatable (default: this "
        f"machine's public address, from {CHECKIP_URL})",
    )
    parser.add_argument("--gpu-type", help="GCE accelerator (default: the stack's, else gpuType's)")
    parser.add_argument(
        "--spot",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a spot VM (default: the stack's, else off)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kgg.infra.password import PasswordError
    from kgg.infra.settings import SettingsError

    try:
        return _init(args)
    except (SettingsError, PasswordError) as error:
        # The program's own checks: their messages name the key and the fix.
        raise InitError(str(error)) from error


def gcloud_value(name: str) -> str:
    """`gcloud config get-value NAME`, or "" when gcloud is missing or the value unset."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        return ""
    try:
        result = subprocess.run(
            [gcloud, "config", "get-value", name],
            capture_output=True,
            text=True,
            timeout=GCLOUD_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    value = result.stdout.strip()
    return value if result.returncode == 0 and value != "(unset)" else ""


def public_address(url: str = CHECKIP_URL) -> str:
    """This machine's public IPv4 address as the internet sees it (the notebook's visitor)."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=LOOKUP_TIMEOUT_SECONDS) as response:
            return response.read(64).decode("ascii", "replace").strip()
    except OSError as error:
        raise InitError(
            f"could not look up your public address at {url} ({error}); pass it: "
            "--allow YOUR.IPV4.ADDRESS/32"
        ) from None


def own_range(address: str) -> str:
    try:
        return f"{ipaddress.IPv4Address(address)}/32"
    except ValueError:
        raise InitError(
            f"{CHECKIP_URL} answered {address[:40]!r}, not an IPv4 address; pass yours: "
            "--allow YOUR.IPV4.ADDRESS/32"
        ) from None


def ask_password() -> str:
    """The Jupyter password, typed twice without echo; PASSWORD_ATTEMPTS tries."""
    from kgg.infra.password import MIN_PASSWORD_LENGTH, PasswordError, check_password

    for _ in range(PASSWORD_ATTEMPTS):
        password = getpass(f"Jupyter password (at least {MIN_PASSWORD_LENGTH} characters): ")
        try:
            check_password(password)
        except PasswordError:
            print(f"too short: use at least {MIN_PASSWORD_LENGTH} characters", file=sys.stderr)
            continue
        if getpass("The same again: ") == password:
            return password
        print("the two differ; again", file=sys.stderr)
    raise InitError(
        "no password set; run `kgg init` again, or later "
        f"`pulumi config set --secret {PASSWORD_KEY}`"
    )


def _required(value: str | None, what: str, flag: str, gcloud_key: str, example: str) -> str:
    found = value or gcloud_value(gcloud_key)
    if not found:
        raise InitError(
            f"no {what}: pass {flag} {example}, or set gcloud's default "
            f"(`gcloud config set {gcloud_key} {example}`)"
        )
    return found


def _init(args: argparse.Namespace) -> int:
    from kgg.cli import preflight, stack_file
    from kgg.infra.stack_config import PROJECT, declared_defaults

    root = stack_file.find_project_root(Path.cwd())
    if root is None:
        raise InitError(
            f"no Pulumi.yaml of {PROJECT} in {Path.cwd()} or above; run `kgg init` "
            "in the keras-gpu-gcp checkout"
        )
    project = _required(args.project, "GCP project", "--project", "project", "YOUR-PROJECT")
    region = _required(args.region, "GCP region", "--region", "compute/region", "us-central1")
    checks = preflight.Preflight.from_environment(project)

    path = stack_file.stack_path(root, args.stack)
    header, document = stack_file.read_stack(path)
    existing = document.get("config") or {}
    defaults = declared_defaults(root)
    own = stack_file.own_key
    values = {
        stack_file.GCP_PROJECT: project,
        stack_file.GCP_REGION: region,
        own("gpuType"): args.gpu_type or existing.get(own("gpuType")) or defaults["gpuType"],
    }
    if args.spot is not None:
        values[own("spot")] = args.spot
    access = existing.get(own("notebookAccess")) or defaults["notebookAccess"]
    if args.allow or access == "public":
        values[own("allowedSourceRanges")] = args.allow or [own_range(public_address())]
    document = stack_file.merged(document, values)
    settings = stack_file.settings_of(document, root)

    problems = preflight.missing_apis(checks.enabled_services(project), project)
    if not problems:  # without the Compute API there is no quota to read
        problems = preflight.quota_problems(
            checks.project_quotas(project),
            checks.region_quotas(project, region),
            gpu_type=settings.gpu_type,
            gpus=settings.gpus_attached,
            spot=settings.spot,
            project=project,
            region=region,
        )
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        return EXIT_USAGE

    stack_file.write_stack(path, header, document)
    print(
        f"wrote {path.name}: project {project}, region {region}, "
        f"{settings.gpus_attached}x {settings.gpu_type}{' (spot)' if settings.spot else ''}, "
        f"notebook reachable from {list(settings.notebook_source_ranges)}"
    )
    return _set_password(root, args.stack)


def _set_password(root: Path, stack: str) -> int:
    set_secret = f"pulumi config set --secret {PASSWORD_KEY} --stack {stack}"
    pulumi = shutil.which("pulumi")
    if pulumi is None:
        print(
            f"error: the password needs the Pulumi CLI, which is not installed: install it "
            f"({PULUMI_INSTALL}), then run `pulumi stack select --create {stack}`, "
            f"`{set_secret}` and `pulumi up`",
            file=sys.stderr,
        )
        return EXIT_USAGE
    password = ask_password()
    # Creates the stack on the user's backend if it is new (it may prompt for a login or a
    # passphrase: the terminal stays attached) and makes it the current one for `pulumi up`.
    selected = subprocess.run([pulumi, "stack", "select", "--create", stack], cwd=root, check=False)
    if selected.returncode != 0:
        raise InitError(
            f"`pulumi stack select --create {stack}` failed (exit {selected.returncode}, see "
            f"above); fix that, then run `{set_secret}` and `pulumi up`"
        )
    stored = subprocess.run(
        [pulumi, "config", "set", "--secret", PASSWORD_KEY, "--stack", stack],
        input=password,
        capture_output=True,
        text=True,
        cwd=root,
        check=False,
    )
    if stored.returncode != 0:
        detail = (stored.stderr.strip().splitlines() or ["no message"])[-1]
        raise InitError(
            f"`{set_secret}` failed ({detail}); run it yourself (it prompts; a passphrase stack "
            "needs PULUMI_CONFIG_PASSPHRASE when the password comes on stdin)"
        )
    print(f"stored {PASSWORD_KEY} as a secret of stack {stack}")
    print("next: pulumi up")
    return 0
