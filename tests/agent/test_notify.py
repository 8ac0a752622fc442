"""Notifications (kgg/agent/notify.py, kgg/common/vm_runtime.py's post): one message to the
stack's webhook when a run ends or fails and when the boot fails, against a local HTTP server."""

from __future__ import annotations

import dataclasses
import json
import urllib.request
from collections.abc import Iterator

import pytest

from kgg.agent.agent import Agent
from kgg.agent.boot import boot
from kgg.agent.training import training_job
from kgg.common.vm_runtime import webhook_payload
from tests.agent.conftest import FakeSystem
from tests.agent.test_training import DATA, put
from tests.startup.harness import RUN_ID
from tests.webhook_server import Webhook, running_webhook

SECRET = "projects/123456789012/secrets/kgg-dev-0a1b2c-notify-webhook"
NO_MENTIONS = "allowed_mentions"
# What a bucket writer puts in a run's metrics.json to post as the bot: a ping to the whole
# channel and a link that shows other text than where it goes, in each service's markup.
HOSTILE_SCORED_ON = (
    "<!channel> <https://evil.example|your results> @everyone [results](https://evil.example)"
)


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    with running_webhook() as hook:
        yield hook


@pytest.fixture
def notifying(agent: Agent, webhook: Webhook) -> Agent:
    """The agent of a stack with notifyWebhook: the secret's URL is the local server."""
    secrets = {SECRET: webhook.url}
    return dataclasses.replace(
        agent,
        instance=dataclasses.replace(agent.instance, notify_secret=SECRET),
        read_webhook=lambda secret: secrets[secret],
    )


def with_data(agent: Agent) -> None:
    put(agent.instance.bucket, f"{DATA}/train/Maize/1.png", b"png")
    put(agent.instance.bucket, f"{DATA}/_upload_manifest.json", b'{"version": 1}')


def test_a_finished_run_posts_its_state_score_time_and_cost(
    notifying: Agent, webhook: Webhook
) -> None:
    with_data(notifying)
    metrics = {"micro_f1": 0.9531, "scored_on": "holdout"}
    put(notifying.instance.bucket, f"runs/{RUN_ID}/metrics.json", json.dumps(metrics).encode())
    notifying.status.update("cost.run_seconds=2400", "cost.run_usd=0.39")

    assert training_job(notifying, poll_seconds=0.1) == 0

    ((path, body),) = webhook.posts
    assert path == "/hooks/T000/B000/secret-token"
    assert body["text"] == (
        f"keras-gpu-gcp: run {RUN_ID} done, micro-F1 0.9531 on holdout, trained 40m 00s, "
        "~$0.39 (estimate), on kgg-dev-vm"
    )
    assert (body["event"], body["state"], body["run_id"]) == ("run-done", "done", RUN_ID)
    assert (body["micro_f1"], body["seconds"], body["usd_estimate"]) == (0.9531, 2400.0, 0.39)


def test_a_failed_run_posts_that_it_failed(
    notifying: Agent, webhook: Webhook, system: FakeSystem
) -> None:
    with_data(notifying)
    system.job = "echo 'Traceback'; exit 1"

    assert training_job(notifying, poll_seconds=0.1) == 1

    ((_, body),) = webhook.posts
    assert body["text"].startswith(f"keras-gpu-gcp: run {RUN_ID} failed")
    assert body["state"] == "failed"


def test_a_failed_boot_step_posts_the_step_and_the_error(
    notifying: Agent, webhook: Webhook, system: FakeSystem
) -> None:
    system.tensorflow_gpus = "0"

    assert boot(notifying) == 1

    ((_, body),) = webhook.posts
    assert body["event"] == "startup-failed" and body["step"] == "gpu-check"
    assert body["text"].startswith("keras-gpu-gcp: the boot failed on kgg-dev-vm at step gpu-check")


def test_a_stack_without_a_webhook_posts_nothing(agent: Agent, webhook: Webhook) -> None:
    with_data(agent)
    assert training_job(agent, poll_seconds=0.1) == 0
    assert webhook.posts == []


def test_a_webhook_that_fails_changes_nothing_else(notifying: Agent) -> None:
    broken = dataclasses.replace(notifying, read_webhook=lambda secret: "http://127.0.0.1:9/x")
    with_data(broken)
    assert training_job(broken, poll_seconds=0.1) == 0
    assert "notification not sent" in broken.paths.log.read_text()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://hooks.slack.com/services/T/B/X", {"text": "hi"}),
        ("https://discord.com/api/webhooks/1/x", {"content": "hi", NO_MENTIONS: {"parse": []}}),
        (
            "https://ptb.discordapp.com/api/webhooks/1/x",
            {"content": "hi", NO_MENTIONS: {"parse": []}},
        ),
        ("https://example.com/hook", {"text": "hi", "state": "done"}),
    ],
)
def test_each_kind_of_webhook_gets_the_body_it_takes(url: str, expected: dict) -> None:
    assert webhook_payload(url, "hi", {"state": "done"}) == expected


@pytest.fixture
def slack_and_discord(webhook: Webhook, monkeypatch: pytest.MonkeyPatch) -> Webhook:
    """The local server as hooks.slack.com and discord.com: urllib sends http:// requests for
    them to it as their proxy (the absolute URL is the request's path), the GCS emulator is
    reached directly."""
    monkeypatch.setenv("http_proxy", webhook.url.split("/hooks/")[0])
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setattr(urllib.request, "_opener", None)  # urlopen reads the proxies anew
    return webhook


@pytest.mark.parametrize(
    ("url", "key"),
    [("http://hooks.slack.com/services/T/B/X", "text"),
     ("http://discord.com/api/webhooks/1/x", "content")],
    ids=["slack", "discord"],
)  # fmt: skip
def test_a_bucket_writers_metrics_cannot_ping_or_link_as_the_bot(
    notifying: Agent, slack_and_discord: Webhook, url: str, key: str
) -> None:
    agent = dataclasses.replace(notifying, read_webhook=lambda secret: url)
    with_data(agent)
    metrics = {"micro_f1": 0.9, "scored_on": HOSTILE_SCORED_ON}
    put(agent.instance.bucket, f"runs/{RUN_ID}/metrics.json", json.dumps(metrics).encode())

    assert training_job(agent, poll_seconds=0.1) == 0

    ((path, body),) = slack_and_discord.posts
    assert path == url
    text = body[key]
    assert "evil.example" not in text and "channel" not in text and "everyone" not in text
    assert "micro-F1 0.9000 on validation" in text
    if key == "content":
        assert body[NO_MENTIONS] == {"parse": []}


def test_slack_and_discord_markup_in_any_message_is_shown_as_text() -> None:
    text = "step data: <!channel> & <https://x|y> @everyone [a](https://x)"
    slack = webhook_payload("https://hooks.slack.com/services/T/B/X", text, {})["text"]
    discord = webhook_payload("https://discord.com/api/webhooks/1/x", text, {})["content"]

    assert slack == (
        "step data: &lt;!channel&gt; &amp; &lt;https://x|y&gt; @everyone [a](https://x)"
    )
    assert discord == (
        "step data: \\<!channel\\> & \\<https://x\\|y\\> \\@everyone \\[a\\](https://x)"
    )


def test_a_webhook_url_with_a_password_is_refused_and_never_logged(notifying: Agent) -> None:
    """`https://user:token@host/...` in the secret: urllib's errors carry the netloc, so a failed
    post used to write the token to startup.log (and the bucket's copy, and the status tail)."""
    url = "http://kgg:tok3n-canary@127.0.0.1:9/hook"
    agent = dataclasses.replace(notifying, read_webhook=lambda secret: url)
    with_data(agent)

    assert training_job(agent, poll_seconds=0.1) == 0

    log = agent.paths.log.read_text()
    assert "tok3n-canary" not in log
    assert "notification not sent: the webhook URL has a user:password@ part, refused" in log


def test_a_failed_request_names_the_host_and_never_the_userinfo() -> None:
    from kgg.common.vm_runtime import CloudError, request

    with pytest.raises(CloudError) as failed:
        request("http://kgg:tok3n-canary@127.0.0.1:9/x", attempts=1)

    assert str(failed.value).startswith("127.0.0.1:9: ")
    assert "tok3n-canary" not in str(failed.value)
