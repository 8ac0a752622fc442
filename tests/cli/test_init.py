"""`kgg init` on a temp HOME in a temp copy of the project, against the Service Usage/Compute fake
(tests/cli/fake_preflight.py) and a stub `pulumi` that records what it is given."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from kgg.cli import main, preflight
from kgg.cli.commands import init as init_command
from kgg.cli.gce import ENDPOINT_ENV
from kgg.infra.catalogue import CURRENT_GPUS
from kgg.infra.stack_config import PROJECT_ROOT, settings_for_stack
from tests import discovery
from tests.iam import PROJECT, REGION

from .fake_preflight import FakeProjectApis, running_fake

PASSWORD = "correct horse battery"
MY_ADDRESS = "198.51.100.23"
STUB = """#!{python}
import json, os, sys
record = {{"argv": sys.argv[1:], "stdin": "" if sys.argv[1] == "stack" else sys.stdin.read()}}
with open({log!r}, "a") as log:
    log.write(json.dumps(record) + "\\n")
answers = {answers!r}
sys.stdout.write(answers.get(" ".join(sys.argv[1:]), ""))
"""


def _stub(folder: Path, name: str, log: Path, answers: dict[str, str] | None = None) -> None:
    path = folder / name
    path.write_text(STUB.format(python=sys.executable, log=str(log), answers=answers or {}))
    path.chmod(0o755)


def _recorded(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture
def project_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A checkout (Pulumi.yaml and the kgg package, nothing else) as the working directory,
    a fresh HOME, and a PATH holding only the stubs a test puts in `bin`."""
    root = tmp_path / "checkout"
    root.mkdir()
    shutil.copy(PROJECT_ROOT / "Pulumi.yaml", root)
    shutil.copytree(PROJECT_ROOT / "kgg", root / "kgg",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    (tmp_path / "home").mkdir()
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.chdir(root)
    monkeypatch.setattr(init_command, "public_address", lambda: MY_ADDRESS)
    return root


@pytest.fixture
def pulumi_log(project_dir: Path) -> Path:
    log = project_dir.parent / "pulumi.jsonl"
    _stub(project_dir.parent / "bin", "pulumi", log)
    return log


@pytest.fixture
def apis(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeProjectApis]:
    with running_fake() as fake:
        monkeypatch.setenv(ENDPOINT_ENV, f"{fake.url}compute/v1/")
        monkeypatch.setenv(preflight.SERVICEUSAGE_ENDPOINT_ENV, fake.url)
        yield fake


@pytest.fixture
def typed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the user types at the password prompts, in order (consumed)."""
    answers = [PASSWORD, PASSWORD]
    monkeypatch.setattr(init_command, "getpass", lambda _prompt: answers.pop(0))
    return answers


def _init(*argv: str) -> int:
    return main.run(["init", "--stack", "trial", *argv])


def _init_here(*argv: str) -> int:
    return _init("--project", PROJECT, "--region", REGION, *argv)


def _stack(project_dir: Path, stack: str = "trial") -> dict:
    return yaml.safe_load((project_dir / f"Pulumi.{stack}.yaml").read_text())


def test_init_writes_a_stack_the_programs_loader_renders(
    project_dir: Path, pulumi_log: Path, apis: FakeProjectApis, typed: list[str], capsys
) -> None:
    assert _init_here("--gpu-type", "nvidia-l4") == 0

    assert _stack(project_dir)["config"] == {
        "gcp:project": PROJECT,
        "gcp:region": REGION,
        "keras-gpu-gcp:gpuType": "nvidia-l4",
        "keras-gpu-gcp:allowedSourceRanges": [f"{MY_ADDRESS}/32"],
    }
    settings = settings_for_stack("trial", root=project_dir)
    assert (settings.gpu_type, settings.machine_type) == ("nvidia-l4", "g2-standard-4")
    assert settings.allowed_source_ranges == (f"{MY_ADDRESS}/32",)
    rendered = subprocess.run(
        [sys.executable, "-m", "kgg.infra", "render", "--stack", "trial"],
        cwd=project_dir, env={"PYTHONPATH": str(project_dir), "HOME": str(project_dir.parent)},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr
    assert rendered.stdout.startswith("#!/usr/bin/env bash")
    assert rendered.stderr == ""  # no note: allowedSourceRanges is set
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == "next: pulumi up"
    assert f"1x nvidia-l4, notebook reachable from ['{MY_ADDRESS}/32']" in out


def test_the_password_reaches_pulumi_on_stdin_only(
    project_dir: Path, pulumi_log: Path, apis: FakeProjectApis, typed: list[str], capsys
) -> None:
    assert _init_here() == 0

    assert _recorded(pulumi_log) == [
        {"argv": ["stack", "select", "--create", "trial"], "stdin": ""},
        {"argv": ["config", "set", "--secret", "jupyterPassword", "--stack", "trial"],
         "stdin": PASSWORD},
    ]  # fmt: skip
    assert typed == []  # asked twice
    printed = capsys.readouterr()
    assert PASSWORD not in printed.out + printed.err
    assert PASSWORD not in (project_dir / "Pulumi.trial.yaml").read_text()


def test_the_checks_are_the_apis_and_both_gpu_quotas(
    project_dir: Path, pulumi_log: Path, apis: FakeProjectApis, typed: list[str]
) -> None:
    assert _init_here() == 0
    assert apis.calls == [
        f"GET /v1/projects/{PROJECT}/services?filter=state%3AENABLED&pageSize=200",
        f"GET /compute/v1/projects/{PROJECT}",
        f"GET /compute/v1/projects/{PROJECT}/regions/{REGION}",
    ]


def test_init_keeps_the_stack_files_other_keys_and_its_comment(
    project_dir: Path, pulumi_log: Path, apis: FakeProjectApis, typed: list[str]
) -> None:
    config: dict[str, object] = {
        "gcp:project": "old-project",
        "keras-gpu-gcp:jupyterPassword": {"secure": "v1:ciphertext"},
        "keras-gpu-gcp:labels": {"team": "ml"},
        "keras-gpu-gcp:gpuType": "nvidia-tesla-t4",
    }
    existing = {"encryptionsalt": "v1:abc:def", "config": config}
    path = project_dir / "Pulumi.trial.yaml"
    path.write_text("# my stack\n" + yaml.safe_dump(existing))

    assert _init_here("--allow", "203.0.113.0/28", "--spot") == 0

    assert path.read_text().startswith("# my stack\n")
    written = _stack(project_dir)
    assert written["encryptionsalt"] == "v1:abc:def"
    assert written["config"] == {
        **config,
        "gcp:project": PROJECT,
        "gcp:region": REGION,
        "keras-gpu-gcp:allowedSourceRanges": ["203.0.113.0/28"],
        "keras-gpu-gcp:spot": True,
    }


def test_project_and_region_come_from_gclouds_config(
    project_dir: Path, pulumi_log: Path, apis: FakeProjectApis, typed: list[str]
) -> None:
    gcloud_log = project_dir.parent / "gcloud.jsonl"
    answers = {"config get-value project": f"{PROJECT}\n",
               "config get-value compute/region": f"{REGION}\n"}  # fmt: skip
    _stub(project_dir.parent / "bin", "gcloud", gcloud_log, answers)

    assert _init() == 0

    config = _stack(project_dir)["config"]
    assert (config["gcp:project"], config["gcp:region"]) == (PROJECT, REGION)


def test_no_project_anywhere_says_both_ways_to_give_one(project_dir: Path, capsys) -> None:
    assert _init("--region", REGION) == 2
    assert capsys.readouterr().err == (
        "error: no GCP project: pass --project YOUR-PROJECT, or set gcloud's default "
        "(`gcloud config set project YOUR-PROJECT`)\n"
    )


def test_no_credentials_is_one_line_with_the_fix(
    project_dir: Path, apis: FakeProjectApis, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import google.auth.compute_engine._metadata as gce_metadata

    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS")
    monkeypatch.setattr(gce_metadata, "_NO_GCE_CHECK", True)  # not on a VM

    assert _init_here() == 2

    assert capsys.readouterr().err == (
        "error: no Google credentials (Application Default Credentials) on this machine; "
        "run `gcloud auth application-default login`\n"
    )
    assert apis.calls == []
    assert not (project_dir / "Pulumi.trial.yaml").exists()


def test_a_disabled_api_is_refused_naming_it_and_the_command_that_enables_it(
    project_dir: Path, pulumi_log: Path, apis: FakeProjectApis, capsys
) -> None:
    apis.enabled -= {"workflows.googleapis.com", "compute.googleapis.com"}

    assert _init_here() == 2

    assert capsys.readouterr().err == (
        f"error: APIs not enabled in project {PROJECT}: compute.googleapis.com, "
        "workflows.googleapis.com; enable with `gcloud services enable compute.googleapis.com "
        f"workflows.googleapis.com --project {PROJECT}`\n"
    )
    assert [call for call in apis.calls if "/compute/" in call] == []  # no quota without it
    assert not (project_dir / "Pulumi.trial.yaml").exists()
    assert _recorded(pulumi_log) == []


@pytest.mark.parametrize(
    ("where", "metric", "line"),
    [
        ("project", "GPUS_ALL_REGIONS",
         f"error: quota GPUS_ALL_REGIONS of project {PROJECT} is 0, the stack needs 1: request at "
         "least 1 for compute.googleapis.com/gpus_all_regions at "
         f"https://console.cloud.google.com/iam-admin/quotas?project={PROJECT} (approval takes "
         "minutes to days)\n"),
        ("region", "NVIDIA_T4_GPUS",
         f"error: quota NVIDIA_T4_GPUS in region {REGION} is 0, the stack needs 1: request at "
         f"least 1 for compute.googleapis.com/nvidia_t4_gpus in {REGION} at "
         f"https://console.cloud.google.com/iam-admin/quotas?project={PROJECT} (or pick a region "
         "with quota: --region)\n"),
    ],
)  # fmt: skip
def test_zero_gpu_quota_is_refused_naming_the_metric_and_where_to_ask(
    where: str, metric: str, line: str,
    project_dir: Path, pulumi_log: Path, apis: FakeProjectApis, capsys,
) -> None:  # fmt: skip
    quotas = apis.project_quotas if where == "project" else apis.region_quotas
    quotas[metric] = 0

    assert _init_here() == 2

    assert capsys.readouterr().err == line
    assert not (project_dir / "Pulumi.trial.yaml").exists()
    assert _recorded(pulumi_log) == []


def test_without_the_pulumi_cli_init_writes_the_plain_keys_and_says_what_to_run(
    project_dir: Path, apis: FakeProjectApis, capsys
) -> None:
    assert shutil.which("pulumi") is None

    assert _init_here() == 2  # and asks no password: getpass is not replaced here

    assert capsys.readouterr().err == (
        "error: the password needs the Pulumi CLI, which is not installed: install it "
        "(https://www.pulumi.com/docs/iac/download-install/), then run `pulumi stack select "
        "--create trial`, `pulumi config set --secret jupyterPassword --stack trial` and "
        "`pulumi up`\n"
    )
    assert _stack(project_dir)["config"]["gcp:project"] == PROJECT


def test_a_bad_allowed_range_is_refused_before_any_call(
    project_dir: Path, apis: FakeProjectApis, capsys
) -> None:
    assert _init_here("--allow", "203.0.113.7/24") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: allowedSourceRanges entry '203.0.113.7/24' is not a CIDR range")
    assert err.count("\n") == 1
    assert not (project_dir / "Pulumi.trial.yaml").exists()


def test_a_short_or_mistyped_password_is_asked_again(
    project_dir: Path, pulumi_log: Path, apis: FakeProjectApis, typed: list[str], capsys
) -> None:
    typed[:0] = ["short", PASSWORD, "a typo in it"]

    assert _init_here() == 0

    assert typed == []
    assert _recorded(pulumi_log)[-1]["stdin"] == PASSWORD
    assert "too short: use at least 12 characters" in capsys.readouterr().err


def test_a_lookup_answer_that_is_not_an_address_says_to_pass_allow() -> None:
    assert init_command.own_range("198.51.100.23") == "198.51.100.23/32"
    with pytest.raises(init_command.InitError, match=r"--allow YOUR\.IPV4\.ADDRESS/32"):
        init_command.own_range("<html>")


def test_a_spot_vm_may_use_the_ordinary_quota_when_it_has_no_preemptible_one() -> None:
    granted = [{"metric": "GPUS_ALL_REGIONS", "limit": 2}]
    region: list[dict[str, str | int]] = [
        {"metric": "NVIDIA_T4_GPUS", "limit": 2},
        {"metric": "PREEMPTIBLE_NVIDIA_T4_GPUS"},
    ]
    args = {"gpu_type": "nvidia-tesla-t4", "project": PROJECT, "region": REGION}
    assert preflight.quota_problems(granted, region, gpus=2, spot=True, **args) == []
    (problem,) = preflight.quota_problems(granted, region[1:], gpus=2, spot=True, **args)
    assert "PREEMPTIBLE_NVIDIA_T4_GPUS or NVIDIA_T4_GPUS in region us-central1 is 0" in problem


def test_every_quota_metric_is_one_compute_engine_reports_for_a_current_gpu() -> None:
    enum = set(discovery.load("compute.v1").schemas["Quota"]["properties"]["metric"]["enum"])
    metrics = {preflight.PROJECT_GPU_METRIC, *preflight.REGION_GPU_METRICS.values(),
               *preflight.PREEMPTIBLE_GPU_METRICS.values()}  # fmt: skip
    assert metrics <= enum
    assert set(preflight.PREEMPTIBLE_GPU_METRICS) == set(CURRENT_GPUS)


def test_a_users_credentials_bill_the_checks_to_the_project() -> None:
    """Service Usage refuses a user's credentials that name no quota project."""
    checks = preflight.Preflight.from_environment(PROJECT)
    assert checks.session.credentials.quota_project_id == PROJECT


def test_a_refused_check_is_one_line_naming_the_call_and_the_fix(
    project_dir: Path, apis: FakeProjectApis, capsys
) -> None:
    from kgg.common.emulator import acting_as

    with acting_as(apis.stack.vm_token):  # the VM's identity may not list the project's APIs
        assert _init_here() == 2

    err = capsys.readouterr().err
    assert err.startswith(f"error: GET {apis.url}v1/projects/{PROJECT}/services: HTTP 403: ")
    assert "'serviceusage.services.list' denied" in err
    assert err.endswith("your account needs to read the project (e.g. roles/viewer), with "
                        "credentials from `gcloud auth application-default login`\n")  # fmt: skip
    assert err.count("\n") == 1
