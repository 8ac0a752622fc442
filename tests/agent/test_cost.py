"""The cost ledger (kgg/agent/cost.py): the stack's VMs' running time x the catalogue's price,
kept in the bucket so a recreated VM goes on counting; its summary in the status document."""

from __future__ import annotations

import dataclasses
import functools
import json

import pytest

from kgg.agent.agent import Agent
from kgg.agent.cost import COST_OBJECT, CostTicker, tick
from kgg.agent.job_state import write_job_state
from kgg.common import storage
from kgg.startup.render import vm_settings
from tests.agent.conftest import uploaded_status
from tests.agent.test_training import put
from tests.startup.harness import RUN_ID, settings_for

NOW = "2026-11-27T10:00:00Z"


def booted(agent: Agent, boot_id: str, uptime: float) -> None:
    """The kernel's view of this boot, under the agent's root."""
    agent.paths.boot_id.parent.mkdir(parents=True, exist_ok=True)
    agent.paths.boot_id.write_text(boot_id + "\n")
    agent.paths.uptime.write_text(f"{uptime} 1.0\n")


def priced(agent: Agent, hourly_usd: float | None) -> Agent:
    return dataclasses.replace(
        agent, settings=dataclasses.replace(agent.settings, hourly_usd=hourly_usd)
    )


def test_a_boot_counts_its_uptime_and_the_run_the_time_it_trained() -> None:
    tick_r1 = functools.partial(tick, run_id="r1", hourly_usd=0.36, spot=False, now=NOW)
    ledger = tick_r1({}, boot_id="b1", uptime=600, training=False)
    ledger = tick_r1(ledger, boot_id="b1", uptime=1200, training=True)
    ledger = tick_r1(ledger, boot_id="b1", uptime=4200, training=True)

    assert ledger["boots"]["b1"] == {
        "seconds": 4200,
        "usd": 0.42,
        "hourly_usd": 0.36,
        "spot": False,
    }
    assert ledger["runs"]["r1"] == {"seconds": 3600.0, "usd": 0.36}  # 1200 s -> 4200 s
    assert ledger["since"] == NOW


def test_a_new_boot_adds_to_the_stacks_total_and_keeps_its_start() -> None:
    first = tick({}, boot_id="b1", uptime=3600, run_id="r1", training=False, hourly_usd=1.0,
                 spot=True, now=NOW)  # fmt: skip
    second = tick(first, boot_id="b2", uptime=1800, run_id="r1", training=False, hourly_usd=1.0,
                  spot=True, now="2026-11-28T00:00:00Z")  # fmt: skip

    assert {boot: entry["usd"] for boot, entry in second["boots"].items()} == {"b1": 1.0, "b2": 0.5}
    assert second["since"] == NOW


def test_a_vm_on_a_new_disk_takes_over_the_buckets_ledger_and_reports_the_sum(
    agent: Agent,
) -> None:
    earlier = {"version": 1, "since": NOW, "runs": {RUN_ID: {"seconds": 1800.0, "usd": 0.3}},
               "boots": {"old": {"seconds": 7200.0, "usd": 1.2}}}  # fmt: skip
    put(agent.instance.bucket, COST_OBJECT, json.dumps(earlier).encode())
    booted(agent, "new-boot", 1800)
    write_job_state(agent.paths.job_state, "running")
    ticker = CostTicker(priced(agent, 0.6), every=0)

    ticker()
    booted(agent, "new-boot", 2400)  # ten minutes of training later
    ticker()

    cost = uploaded_status(agent.instance.bucket)["cost"]
    assert cost == {
        "hourly_usd": 0.6, "spot": False, "vm_seconds": 2400.0, "vm_usd": 0.4,
        "run_seconds": 2400.0, "run_usd": 0.4, "total_seconds": 9600.0, "total_usd": 1.6,
        "since": NOW,
    }  # fmt: skip
    stored = json.loads(storage.read_bytes(f"gs://{agent.instance.bucket}/{COST_OBJECT}") or b"")
    assert stored["boots"]["old"]["seconds"] == 7200.0


def test_without_a_catalogue_price_the_time_is_counted_and_no_cost_made_up(agent: Agent) -> None:
    booted(agent, "b1", 900)
    CostTicker(priced(agent, None))()

    cost = uploaded_status(agent.instance.bucket)["cost"]
    assert (cost["vm_seconds"], cost["vm_usd"], cost["total_usd"]) == (900.0, None, None)


def test_the_ticker_ticks_at_most_once_a_minute_unless_forced(agent: Agent) -> None:
    moments = iter([0.0, 30.0, 31.0])
    booted(agent, "b1", 100)
    ticker = CostTicker(priced(agent, 1.0), clock=lambda: next(moments))
    ticker()
    booted(agent, "b1", 130)
    ticker()
    assert uploaded_status(agent.instance.bucket)["cost"]["vm_seconds"] == 100.0
    ticker(force=True)
    assert uploaded_status(agent.instance.bucket)["cost"]["vm_seconds"] == 130.0


@pytest.mark.parametrize("spot", [False, True])
def test_the_vm_gets_the_catalogue_price_of_its_stack(spot: bool) -> None:
    settings = settings_for(spot=spot)
    assert vm_settings(settings).hourly_usd == settings.estimated_hourly_usd
    assert vm_settings(settings).hourly_usd is not None


def test_the_ticker_survives_any_exception_and_logs_it(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kgg.agent import cost

    booted(agent, "b1", 60.0)

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("something nobody expected")

    monkeypatch.setattr(cost, "tick", broken)
    CostTicker(agent)(force=True)  # no exception

    log = agent.paths.log.read_text()
    assert "cost ledger not updated" in log and "KeyError: 'something nobody expected'" in log


def test_a_ledger_keeps_only_what_has_its_shape() -> None:
    from kgg.agent.cost import clean_ledger

    ledger, dropped = clean_ledger({
        "version": 1, "since": NOW,
        "boots": {"ok": {"seconds": 5, "usd": 0.1, "hourly_usd": 0.5, "spot": True},
                  "nan": {"seconds": float("nan")}, "list": [1]},
        "runs": {"r1": {"seconds": 3, "usd": True}, "r2": "x"},
    })  # fmt: skip

    assert ledger == {
        "version": 1, "since": NOW,
        "boots": {"ok": {"seconds": 5.0, "usd": 0.1, "hourly_usd": 0.5, "spot": True}},
        "runs": {"r1": {"seconds": 3.0}},
    }  # fmt: skip
    assert dropped == ["boots.nan", "boots.list", "runs.r2"]
