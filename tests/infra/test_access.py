"""notebookAccess (public | iap) and notifyWebhook, through Pulumi mocks and the settings parser:
failures name the URN or the value."""

from __future__ import annotations

import pulumi
import pytest

from kgg.infra import specs
from kgg.infra.settings import SettingsError, check_webhook
from kgg.infra.stack_config import settings_for_stack
from tests.infra.harness import FAKE_PROJECT_NUMBER, build

IAP = "35.235.240.0/20"
HOOK = "https://hooks.slack.com/services/T000/B000/canary-hook-9d2f"


def _check(resource: pulumi.Resource, *values, check):
    return pulumi.Output.all(resource.urn, *values).apply(lambda args: check(args[0], *args[1:]))


@pulumi.runtime.test
def test_with_iap_no_rule_admits_anything_but_the_iap_range(tmp_path):
    notebook, _, mocks = build(tmp_path, {"notebookAccess": "iap", "allowedSourceRanges": []})

    def check(urn, notebook_sources, ssh_sources, *_registered):
        rules = mocks.of_type("gcp:compute/firewall:Firewall")
        assert {name: r.inputs["sourceRanges"] for r in rules for name in [r.name]} == {
            "kg-notebook": [IAP],
            "kg-iap-ssh": [IAP],
        }, urn
        assert notebook_sources == [IAP] and ssh_sources == [IAP], urn

    return _check(
        notebook.notebook_firewall,
        notebook.notebook_firewall.source_ranges,
        notebook.ssh_firewall.source_ranges,
        notebook.group.urn,
        check=check,
    )


@pulumi.runtime.test
def test_with_iap_the_allowed_ranges_are_ignored_and_the_url_is_the_tunnels(tmp_path):
    notebook, _, _ = build(
        tmp_path, {"notebookAccess": "iap", "allowedSourceRanges": ["0.0.0.0/0"]}
    )

    def check(urn, sources, url):
        assert sources == [IAP], urn
        assert url == "https://localhost:8888 (through `kgg notebook`)", urn

    return _check(
        notebook.notebook_firewall, notebook.notebook_firewall.source_ranges,
        notebook.notebook_url, check=check,
    )  # fmt: skip


def test_iap_stack_previews_without_allowed_source_ranges() -> None:
    settings = settings_for_stack("dev", {"notebookAccess": "iap", "allowedSourceRanges": []})
    assert (settings.notebook_access, settings.allowed_source_ranges) == ("iap", ())
    assert not settings.widely_open


def test_public_stack_still_requires_allowed_source_ranges() -> None:
    with pytest.raises(SettingsError, match="allowedSourceRanges is empty"):
        settings_for_stack("dev", {"allowedSourceRanges": []})


def test_public_is_the_default_access() -> None:
    assert settings_for_stack(
        "dev", {"allowedSourceRanges": ["203.0.113.7/32"]}
    ).notebook_access == ("public")


def test_an_unknown_access_mode_is_refused_naming_it() -> None:
    with pytest.raises(
        SettingsError, match=r"notebookAccess 'vpn' is not one of \['public', 'iap'\]"
    ):
        settings_for_stack("dev", {"notebookAccess": "vpn"})


@pytest.mark.parametrize(
    "url", ["http://hooks.slack.com/canary-x", "hooks.slack.com/canary-x", "https:///canary-x"]
)
def test_a_webhook_that_is_not_an_https_url_is_refused_without_repeating_it(url: str) -> None:
    with pytest.raises(SettingsError) as raised:
        check_webhook(url)
    assert "notifyWebhook is not an https:// URL" in str(raised.value)
    assert "canary" not in str(raised.value)


def test_a_webhook_with_a_user_or_password_is_refused_without_repeating_it() -> None:
    with pytest.raises(SettingsError) as raised:
        check_webhook("https://bot:canary-token@hooks.example.com/notify")
    assert "has a user:password@ part before its host" in str(raised.value)
    assert "canary" not in str(raised.value)


def _build_with_webhook(tmp_path):
    from kgg.infra.component import GpuNotebook
    from kgg.infra.pulumi_config import load_notify_webhook, load_settings
    from tests.infra.harness import start

    mocks = start({"notifyWebhook": HOOK})
    settings, password = load_settings()
    notebook = GpuNotebook(
        "kg", settings, password, stack="dev", build_dir=tmp_path,
        notify_webhook=load_notify_webhook(),
    )  # fmt: skip
    return notebook, mocks


@pulumi.runtime.test
def test_the_webhook_is_a_secret_only_the_vm_reads_and_metadata_only_names_it(tmp_path):
    notebook, mocks = _build_with_webhook(tmp_path)
    secret = notebook.notify_secret
    assert secret is not None

    def check(urn, secret_id, secret_name, email, metadata, _group_registered):
        assert secret_id.startswith("kgg-dev-") and secret_id.endswith("-notify-webhook"), urn
        assert secret_name == f"projects/{FAKE_PROJECT_NUMBER}/secrets/{secret_id}", urn
        versions = mocks.of_type("gcp:secretmanager/secretVersion:SecretVersion")
        (data,) = [v.inputs["secretData"] for v in versions if v.name == "kg-notify-webhook-url"]
        # A secret to the engine: the signed wrapper, so state and logs keep it encrypted.
        assert isinstance(data, dict) and data["value"] == HOOK, urn
        access = [
            (a.inputs["secretId"], a.inputs["role"], a.inputs["member"])
            for a in mocks.of_type("gcp:secretmanager/secretIamMember:SecretIamMember")
            if a.name == "kg-notify-webhook-access"
        ]
        assert access == [
            (secret_name, "roles/secretmanager.secretAccessor", f"serviceAccount:{email}")
        ], urn
        assert metadata[specs.NOTIFY_SECRET_KEY] == secret_name, urn
        assert not [key for key, value in metadata.items() if "canary-hook" in value], urn

    # The group depends on every grant and version: once its URN resolves, all are registered
    # (without it the check could run before the grant exists, as CI once saw).
    return _check(
        secret, secret.secret_id, secret.name, notebook.service_account.email,
        notebook.template.metadata, notebook.group.urn, check=check,
    )  # fmt: skip


@pulumi.runtime.test
def test_without_a_webhook_there_is_no_secret_and_no_metadata_key(tmp_path):
    notebook, _, mocks = build(tmp_path)
    assert notebook.notify_secret is None

    def check(urn, metadata):
        assert specs.NOTIFY_SECRET_KEY not in metadata, urn
        names = [s.name for s in mocks.of_type("gcp:secretmanager/secret:Secret")]
        assert names == ["kg-jupyter-password"], urn

    return _check(notebook.template, notebook.template.metadata, check=check)
