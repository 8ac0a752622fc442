"""Config read through pulumi.Config, as `pulumi preview` would: errors before any resource."""

from __future__ import annotations

import runpy

import pulumi
import pytest

from kgg.infra.pulumi_config import load_settings
from kgg.infra.settings import SettingsError
from kgg.infra.stack_config import PROJECT_ROOT
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


def _warnings(monkeypatch) -> list[str]:
    warnings: list[str] = []
    monkeypatch.setattr(pulumi.log, "warn", lambda message, *a, **k: warnings.append(message))
    return warnings


def test_world_open_notebook_warns_loudly(monkeypatch):
    warnings = _warnings(monkeypatch)
    start({"allowedSourceRanges": ["0.0.0.0/0"]})
    settings, _ = load_settings()
    assert settings.allowed_source_ranges == ("0.0.0.0/0",)
    assert len(warnings) == 1 and "WHOLE INTERNET" in warnings[0]


def test_two_halves_of_the_internet_warn_like_the_whole(monkeypatch):
    warnings = _warnings(monkeypatch)
    start({"allowedSourceRanges": ["0.0.0.0/1", "128.0.0.0/1"]})
    load_settings()
    assert len(warnings) == 1 and "WHOLE INTERNET" in warnings[0]


def test_ranges_wider_than_a_slash_8_warn_with_their_size(monkeypatch):
    warnings = _warnings(monkeypatch)
    start({"allowedSourceRanges": ["10.0.0.0/8", "11.0.0.0/9"]})
    load_settings()
    assert len(warnings) == 1 and "25,165,824 addresses, more than a /8" in warnings[0]


def test_own_range_does_not_warn(monkeypatch):
    warnings = _warnings(monkeypatch)
    start()
    load_settings()
    assert warnings == []


def test_short_password_is_refused_without_echoing_it():
    from kgg.infra.password import PasswordError, jupyter_password_hash

    with pytest.raises(PasswordError) as caught:
        jupyter_password_hash("short1", "AAECAwQFBgcICQoLDA0ODw==")
    assert "short1" not in str(caught.value)
    assert "pulumi config set --secret jupyterPassword" in str(caught.value)


@pytest.mark.parametrize("password", ["", "short1", "eleven-char"])
def test_short_password_stops_the_program_before_any_resource(password):
    from kgg.infra.password import PasswordError

    mocks = start(password=password)
    with pytest.raises(PasswordError) as caught:
        runpy.run_path(str(PROJECT_ROOT / "__main__.py"), run_name="__main__")
    assert "shorter than 12 characters" in str(caught.value)
    assert password not in str(caught.value) or not password
    assert mocks.resources == []


def test_twelve_character_password_is_accepted():
    start(password="twelve-chars")
    _, password = load_settings()
    assert isinstance(password, pulumi.Output)


def test_zone_without_the_gpu_warns_but_still_previews(monkeypatch):
    warnings = _warnings(monkeypatch)
    start({"gcp:zone": "us-central1-d"})
    settings, _ = load_settings()
    assert settings.zones == ("us-central1-d",)
    assert len(warnings) == 1
    assert "zones ['us-central1-d'] do not offer nvidia-tesla-t4" in warnings[0]


def test_zones_set_as_a_list_reach_the_settings():
    start({"zones": ["us-central1-b", "us-central1-c"]})
    settings, _ = load_settings()
    assert settings.zones == ("us-central1-b", "us-central1-c")
