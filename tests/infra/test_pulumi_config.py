"""Config read through pulumi.Config, as `pulumi preview` would: errors before any resource."""

from __future__ import annotations

import pulumi
import pytest

from infra.pulumi_config import load_settings
from infra.settings import SettingsError
from tests.infra.harness import start


def test_missing_password_says_how_to_set_it_as_a_secret():
    start(password=None)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "pulumi config set --secret jupyterPassword" in str(caught.value)


def test_missing_source_ranges_stop_the_preview():
    start({"allowedSourceRanges": []})
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "allowedSourceRanges" in str(caught.value)


def test_world_open_notebook_warns_loudly(monkeypatch):
    warnings = []
    monkeypatch.setattr(pulumi.log, "warn", lambda message, *a, **k: warnings.append(message))
    start({"allowedSourceRanges": ["0.0.0.0/0"]})
    settings, _ = load_settings()
    assert settings.allowed_source_ranges == ("0.0.0.0/0",)
    assert len(warnings) == 1 and "WHOLE INTERNET" in warnings[0]


def test_own_range_does_not_warn(monkeypatch):
    warnings = []
    monkeypatch.setattr(pulumi.log, "warn", lambda message, *a, **k: warnings.append(message))
    start()
    load_settings()
    assert warnings == []


def test_short_password_is_refused_without_echoing_it():
    from infra.password import PasswordError, jupyter_password_hash

    with pytest.raises(PasswordError) as caught:
        jupyter_password_hash("short1", "AAECAwQFBgcICQoLDA0ODw==")
    assert "short1" not in str(caught.value)
    assert "pulumi config set --secret jupyterPassword" in str(caught.value)
