"""Where `status` finds the notebook and its certificate: GCE's template and the VM's guest
attribute, checked (pure); the CLI's view of a phishing bucket is in test_group_commands.py."""

from __future__ import annotations

from typing import Any

from kgg.cli.notebook_identity import (
    NotebookIdentity,
    published_fingerprint,
    render_notebook,
    template_url,
)

from .fake_gce import fixture_body

FINGERPRINT = ":".join(["AB"] * 32)


def template(**metadata: str) -> dict[str, Any]:
    body = fixture_body("running", "GET", "instanceTemplates/kg-template-5f3c2a1")
    items = [{"key": key.replace("_", "-"), "value": value} for key, value in metadata.items()]
    return {**body, "properties": {**body["properties"], "metadata": {"items": items}}}


def test_the_url_is_the_templates_static_ip_and_port() -> None:
    assert template_url(template(kgg_notebook_port="8443")) == "https://34.118.20.7:8443"
    iap = template(kgg_notebook_port="8888", kgg_notebook_access="iap")
    assert template_url(iap) == "https://localhost:8888"


def test_a_template_without_the_port_or_with_an_odd_one_names_no_url() -> None:
    assert template_url(template()) is None  # a stack from before the port was in metadata
    assert template_url(template(kgg_notebook_port="88; rm")) is None
    assert template_url(template(kgg_notebook_port="70000")) is None


def test_only_a_sha256_fingerprint_under_its_own_key_is_taken() -> None:
    assert published_fingerprint([
        {"namespace": "kgg", "key": "other", "value": FINGERPRINT},
        {"namespace": "hostkeys", "key": "tls-sha256", "value": FINGERPRINT},
        {"namespace": "kgg", "key": "tls-sha256", "value": "AB:CD"},
    ]) is None  # fmt: skip
    lower = FINGERPRINT.lower()
    assert published_fingerprint([{"namespace": "kgg", "key": "tls-sha256", "value": lower}]) == (
        FINGERPRINT
    )


def test_the_vms_iap_note_matches_gces_address() -> None:
    gce = NotebookIdentity("https://localhost:8888", FINGERPRINT)
    lines = render_notebook("https://localhost:8888 (kgg notebook)", FINGERPRINT, gce)
    assert not any(line.startswith("WARNING") for line in lines)
    assert lines[0] == "Notebook:    https://localhost:8888"
