"""The agent's status reports: every change goes to the local copy and the bucket; a bucket it
cannot write costs the boot a bounded time, shared with the startup script."""

from __future__ import annotations

import json
from pathlib import Path

from kgg.agent.cloud import Bucket
from kgg.agent.status import StatusReporter, log_tail


class DeadBucket(Bucket):
    """A bucket whose uploads fail after `seconds` of the fake clock."""

    def __init__(self, clock: list[float], seconds: float) -> None:
        super().__init__("kgg-dead-bucket")
        self.clock, self.seconds, self.tries = clock, seconds, 0

    def upload(self, name: str, data: bytes, content_type: str) -> None:
        self.tries += 1
        self.clock[0] += self.seconds
        raise OSError("403 Forbidden")


def test_failed_uploads_stop_once_the_budget_is_spent(tmp_path: Path) -> None:
    clock = [0.0]
    bucket = DeadBucket(clock, seconds=10)
    budget = tmp_path / "status-upload-seconds"
    budget.write_text("30\n")  # what the startup script already spent at this boot
    reporter = StatusReporter(
        tmp_path / "status.json",
        bucket,
        budget_file=budget,
        clock=lambda: clock[0],
    )

    for step in ("gpu-check", "jupyter", "training", "idle"):
        reporter.update(f"step.{step}=running")

    assert bucket.tries == 4  # two tries (20 s) reach 50 s, two more reach 70 s; then none
    assert float(budget.read_text()) == 70
    local = json.loads((tmp_path / "status.json").read_text())
    assert {local["steps"][s]["state"] for s in ("gpu-check", "idle")} == {"running"}


def test_a_service_has_a_budget_of_its_own(tmp_path: Path) -> None:
    clock = [0.0]
    bucket = DeadBucket(clock, seconds=40)
    reporter = StatusReporter(tmp_path / "status.json", bucket, clock=lambda: clock[0])

    reporter.update("training=running")
    reporter.update("training=done")

    assert bucket.tries == 2
    assert reporter.spent == 80


def test_log_tail_is_printable_ascii(tmp_path: Path) -> None:
    log = tmp_path / "startup.log"
    log.write_text("".join(f"line {i}\n" for i in range(50)) + "bad \x1b[31mred\x07 é\n")

    tail = log_tail(log)

    assert tail.splitlines()[0] == "line 11"
    assert tail.splitlines()[-1] == "bad [31mred "


class SlowBucket(Bucket):
    """Keeps the last upload; the first one takes a while, as over a slow network."""

    def __init__(self) -> None:
        super().__init__("kgg-slow-bucket")
        self.last: dict | None = None
        self.delay = 0.5

    def upload(self, name: str, data: bytes, content_type: str) -> None:
        import time

        delay, self.delay = self.delay, 0
        time.sleep(delay)
        self.last = json.loads(data)


def test_the_bucket_never_gets_an_older_document_after_a_newer_one(tmp_path: Path) -> None:
    """The boot and the training service report at the same time (seen in a real boot: the
    service's upload of an older copy landed last)."""
    import threading

    bucket = SlowBucket()
    boot = StatusReporter(tmp_path / "status.json", bucket)
    service = StatusReporter(tmp_path / "status.json", bucket)
    slow = threading.Thread(target=service.update, args=("training=waiting for data",))
    slow.start()
    import time

    time.sleep(0.1)
    boot.update("step.idle=done")
    slow.join()

    assert bucket.last is not None
    assert bucket.last["steps"]["idle"]["state"] == "done"
    assert bucket.last["training"] == "waiting for data"
