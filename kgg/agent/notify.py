"""Notifications to the stack's webhook (notifyWebhook, a Slack, Discord or generic JSON URL kept
in Secret Manager): one message when a run ends or fails, and when the boot fails. The payload and
the post are kgg/common/vm_runtime.py's, with which bootstrap.py sends the same message when the
startup script fails before the env exists. A message that cannot be sent is logged and changes
nothing else."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kgg.agent.agent import Agent
from kgg.common import storage
from kgg.common.contract import METRIC_ID, METRICS_FILE, run_folder
from kgg.common.documents import read
from kgg.common.timestamps import format_duration
from kgg.common.vm_runtime import CloudError, post_webhook

SCORED_ON = ("holdout", "validation")  # what metrics.json's `scored_on` may say


def notify(agent: Agent, text: str, fields: dict[str, Any]) -> bool:
    """Posts `text` (and `fields`, for a generic webhook); True when it was sent."""
    secret = agent.instance.notify_secret
    if not secret or agent.read_webhook is None:
        return False
    try:
        url = agent.read_webhook(secret)
        if not url.startswith(("https://", "http://")):
            raise CloudError(f"{secret} holds no http(s) URL")
        post_webhook(url, text, {"run_id": agent.instance.run_id,
                                 "instance": agent.instance.name, **fields})  # fmt: skip
    except (CloudError, OSError) as error:
        agent.log.warning("notification not sent: %s", error)
        return False
    return True


def step_failed(agent: Agent, step: str, error: Exception, log_file: Path | None = None) -> None:
    """A failed step: in the status document (with the log tail and a hint), then the webhook."""
    agent.record_failure(step, error, log_file)
    notify(
        agent,
        f"keras-gpu-gcp: the boot failed on {agent.instance.name} at step {step}: {error}",
        {"event": "startup-failed", "step": step, "message": str(error)},
    )


def run_ended(agent: Agent, state: str) -> bool:
    """The run's end: its state, headline score, training time and estimated cost."""
    run_id = agent.instance.run_id
    try:
        data = storage.read_limited(
            f"gs://{agent.instance.bucket}/{run_folder(run_id)}{METRICS_FILE}"
        )
        metrics = json.loads(data) if data else None
    except (storage.StorageError, ValueError):  # the bucket's: any of it may be wrong
        metrics = None
    metrics = metrics if isinstance(metrics, dict) else {}
    score = metrics.get(METRIC_ID)
    cost = read(agent.paths.status).cost
    parts = [f"keras-gpu-gcp: run {run_id} {state}"]
    fields: dict[str, Any] = {"event": f"run-{state}", "state": state}
    if isinstance(score, int | float) and not isinstance(score, bool) and 0 <= score <= 1:
        # The bucket's text goes no further than the two names the job writes.
        scored_on = metrics.get("scored_on")
        scored_on = scored_on if scored_on in SCORED_ON else "validation"
        parts.append(f"micro-F1 {score:.4f} on {scored_on}")
        fields |= {METRIC_ID: float(score), "scored_on": scored_on}
    if cost is not None and cost.run_seconds is not None:
        parts.append(f"trained {format_duration(cost.run_seconds)}")
        fields["seconds"] = cost.run_seconds
        if cost.run_usd is not None:
            parts.append(f"~${cost.run_usd:.2f} (estimate)")
            fields["usd_estimate"] = cost.run_usd
    parts.append(f"on {agent.instance.name}")
    return notify(agent, ", ".join(parts), fields)
