"""What GCE says about the VM's group: running, stopped, or waiting for capacity, and the last
error per zone since when. `group_state` is a pure function of the API's answers (kgg.cli.gce),
`render_group` of the state and the time, so every case is tested without a cloud.

The API's shapes: https://cloud.google.com/compute/docs/reference/rest/v1/regionInstanceGroupManagers
(get, listManagedInstances with `lastAttempt.errors`, listErrors), and the stockout errors of
https://cloud.google.com/compute/docs/troubleshooting/troubleshooting-resource-availability
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from kgg.cli.gce import last_segment, zone_of
from kgg.cli.lines import GCE_NAME, clock, field
from kgg.cli.notebook_identity import NotebookIdentity, template_url
from kgg.common.timestamps import format_duration, parse_time

# Capacity, not quota: GCE retries these by itself and a quota increase does not help.
STOCKOUT_CODES = frozenset(
    {"ZONE_RESOURCE_POOL_EXHAUSTED", "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS"}
)
QUOTA_CODES = frozenset({"QUOTA_EXCEEDED"})
# Errors older than this belong to an earlier wait, not to this one.
ERROR_WINDOW = timedelta(hours=24)
START_COMMAND = "kgg start"
STOP_COMMAND = "kgg stop"


@dataclass(frozen=True)
class Vm:
    name: str
    zone: str
    status: str
    action: str
    # The instance's id: a VM the group recreates keeps its name but gets a new one.
    id: str = ""


@dataclass(frozen=True)
class ZoneError:
    """The newest error of one zone, and since when that error keeps coming back."""

    zone: str
    code: str
    message: str
    since: datetime | None
    last: datetime | None


@dataclass(frozen=True)
class GroupState:
    name: str
    region: str
    zones: tuple[str, ...]
    target_size: int
    gpu: str
    vms: tuple[Vm, ...]
    zone_errors: tuple[ZoneError, ...]
    # The current attempt's error (listManagedInstances' lastAttempt) and the zones GCE says
    # have capacity now (ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS).
    attempt: ZoneError | None
    zones_available: tuple[str, ...]
    # Where the notebook is and its published certificate: GCE's word, not the bucket's.
    notebook: NotebookIdentity | None = None
    # The project (from the group's selfLink), for the commands the hints print.
    project: str = ""
    # What takes the VM out of the stack's hands: VMs with the stack's labels that the group
    # does not manage, and a group configuration that rewrites what its VMs run
    # (allInstancesConfig, per-instance configs).
    outside: tuple[Vm, ...] = ()
    group_overrides: tuple[str, ...] = ()

    @property
    def running(self) -> Vm | None:
        return next((vm for vm in self.vms if vm.status == "RUNNING"), None)

    @property
    def phase(self) -> str:
        """stopped | stopping | running | waiting (for capacity) | failing (other errors) |
        starting."""
        if self.target_size == 0:
            return "stopping" if self.vms else "stopped"
        if self.running:
            return "running"
        codes = {error.code for error in (self.attempt, *self.zone_errors) if error}
        if codes & STOCKOUT_CODES:
            return "waiting"
        if codes:
            return "failing"
        return "starting"


def _safe_name(value: str) -> str:
    """A GCE name from an API answer, or "" (names end up in commands the user pastes)."""
    return value if GCE_NAME.fullmatch(value or "") else ""


def _vm(managed: dict[str, Any]) -> Vm:
    url = str(managed.get("instance") or "")
    return Vm(
        name=_safe_name(last_segment(url)),
        zone=_safe_name(zone_of(url)),
        status=str(managed.get("instanceStatus") or ""),
        action=str(managed.get("currentAction") or ""),
        id=str(managed.get("id") or "") if str(managed.get("id") or "").isdigit() else "",
    )


def _attempt(managed: list[dict[str, Any]]) -> tuple[ZoneError | None, tuple[str, ...]]:
    for instance in managed:
        errors = ((instance.get("lastAttempt") or {}).get("errors") or {}).get("errors") or []
        if errors:
            first = errors[0]
            available: list[str] = []
            for detail in first.get("errorDetails") or []:
                metadata = (detail.get("errorInfo") or {}).get("metadatas") or {}
                available += str(metadata.get("zonesAvailable") or "").split(",")
            zone = _vm(instance).zone
            error = ZoneError(zone, str(first.get("code")), _message(first), None, None)
            return error, tuple(z for z in (_safe_name(z.strip()) for z in available) if z)
    return None, ()


def _message(error: dict[str, Any]) -> str:
    """GCE's own sentence: a stockout's `message` is short ("does not have enough resources");
    the long text naming the zones with capacity is its `localizedMessage` detail."""
    for detail in error.get("errorDetails") or []:
        text = (detail.get("localizedMessage") or {}).get("message")
        if text:
            return str(text)
    return str(error.get("message"))


def _zone_errors(items: list[dict[str, Any]], now: datetime) -> tuple[ZoneError, ...]:
    """Per zone: the newest error, and since when the same code repeats without a break."""
    by_zone: dict[str, list[tuple[datetime, str, str]]] = {}
    for item in items:
        when = parse_time(item.get("timestamp"))
        zone = _safe_name(zone_of(str((item.get("instanceActionDetails") or {}).get("instance"))))
        error = item.get("error") or {}
        if when is None or not zone or now - when > ERROR_WINDOW:
            continue
        by_zone.setdefault(zone, []).append(
            (when, str(error.get("code")), str(error.get("message")))
        )
    result = []
    for zone, errors in sorted(by_zone.items()):
        errors.sort(reverse=True)
        last, code, message = errors[0]
        since = last
        for when, other_code, _ in errors[1:]:
            if other_code != code:
                break
            since = when
        result.append(ZoneError(zone, code, message, since, last))
    return tuple(result)


def group_overrides(group: dict[str, Any], per_instance: list[dict[str, Any]]) -> tuple[str, ...]:
    """What in the group's configuration changes what its VMs run, besides its template."""
    found = []
    config = (group.get("allInstancesConfig") or {}).get("properties") or {}
    if config.get("metadata") or config.get("labels"):
        keys = sorted({*(config.get("metadata") or {}), *(config.get("labels") or {})})
        found.append(f"allInstancesConfig sets {', '.join(keys)}")
    names = sorted(str(item.get("name") or "?") for item in per_instance)
    if names:
        found.append(f"per-instance configs for {', '.join(names)}")
    return tuple(found)


def outside_vms(group: dict[str, Any], managed: list[dict[str, Any]],
                labelled: list[dict[str, Any]]) -> tuple[Vm, ...]:  # fmt: skip
    """The VMs with the stack's labels that the group does not manage (abandoned, or made by
    hand): `stop` and idle shutdown do not reach them."""
    ours = {last_segment(str(m.get("instance") or "")) for m in managed}
    return tuple(
        Vm(
            _safe_name(str(vm.get("name") or "")),
            _safe_name(zone_of(str(vm.get("selfLink")))),
            str(vm.get("status") or ""),
            "OUTSIDE THE GROUP",
        )
        for vm in labelled
        if str(vm.get("name") or "") not in ours
    )


def group_state(
    group: dict[str, Any],
    managed: list[dict[str, Any]],
    errors: list[dict[str, Any]],
    template: dict[str, Any],
    now: datetime,
    per_instance: list[dict[str, Any]] | None = None,
    labelled: list[dict[str, Any]] | None = None,
) -> GroupState:
    """The group as the API describes it (see the module docstring for the shapes)."""
    zones = tuple(
        z
        for z in (
            _safe_name(last_segment(str(entry.get("zone"))))
            for entry in (group.get("distributionPolicy") or {}).get("zones") or []
        )
        if z
    )
    labels = (template.get("properties") or {}).get("labels") or {}
    accelerators = (template.get("properties") or {}).get("guestAccelerators") or []
    gpu = labels.get("gpu") or (accelerators[0].get("acceleratorType") if accelerators else "")
    attempt, available = _attempt(managed)
    return GroupState(
        name=str(group.get("name") or ""),
        region=last_segment(str(group.get("region") or "")),
        zones=zones,
        target_size=int(group.get("targetSize") or 0),
        gpu=str(gpu or "the VM"),
        vms=tuple(_vm(instance) for instance in managed),
        zone_errors=_zone_errors(errors, now),
        attempt=attempt,
        zones_available=available,
        notebook=NotebookIdentity(
            template_url(template), missing="" if managed else "no VM in the group"
        ),
        project=_safe_project(str(group.get("selfLink") or "")),
        outside=outside_vms(group, managed, labelled or []),
        group_overrides=group_overrides(group, per_instance or []),
    )


def _safe_project(self_link: str) -> str:
    match = re.search(r"/projects/([a-z][a-z0-9-]{4,28}[a-z0-9])/", self_link)
    return match.group(1) if match else ""


def render_warnings(state: GroupState) -> list[str]:
    """The VM out of the stack's control, said first: it may keep running and paying."""
    lines = []
    for vm in state.outside:
        lines.append(
            f"WARNING: {vm.name or 'a VM'} in {vm.zone or '?'} ({vm.status}) has the stack's "
            f"labels but is not in the group {state.name}: idle shutdown and `{STOP_COMMAND}` "
            f"do not reach it. `{STOP_COMMAND}` deletes it."
        )
    for override in state.group_overrides:
        lines.append(
            f"WARNING: the group {state.name} has {override}: that changes what its VM runs "
            "beyond the stack's template. `pulumi up` does not remove it; see "
            "README.md, 'Security model'."
        )
    return lines


def zone_list(region: str, zones: tuple[str, ...]) -> str:
    """`us-central1 (a, b, c, f)`: the zones by their suffix, as the console shows them."""
    suffixes = [zone.removeprefix(f"{region}-") for zone in zones]
    return f"{region} ({', '.join(suffixes)})"


def _error_rows(state: GroupState) -> list[str]:
    rows = [("zone", "last GCE error", "since", "last")]
    rows += [
        (error.zone, error.code, clock(error.since), clock(error.last))
        for error in state.zone_errors
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return [
        "  " + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3])) + "  " + row[3]
        for row in rows
    ]


def render_group(state: GroupState, now: datetime) -> list[str]:
    """The group's part of `kgg status`: what GCE is doing about the VM, and what to do."""
    return render_warnings(state) + _render_phase(state, now)


def _render_phase(state: GroupState, now: datetime) -> list[str]:
    where = zone_list(state.region, state.zones)
    phase = state.phase
    if phase == "stopped":
        return [
            field("VM", f"stopped (group {state.name} at size 0): no VM charges"),
            f"  start it in any zone of {where} with capacity: {START_COMMAND}",
        ]
    if phase == "stopping":
        return [field("VM", f"stopping: the group deletes {state.vms[0].name or 'the VM'}")]
    if phase == "running":
        vm = state.running
        assert vm is not None
        return [field("VM", f"{vm.name} in {vm.zone}, RUNNING (group {state.name}, {where})")]
    lines: list[str] = []
    if phase == "waiting":
        starts = [error.since for error in state.zone_errors if error.since]
        since = min(starts) if starts else None
        waited = (
            f", since {clock(since)} UTC ({format_duration((now - since).total_seconds())})"
            if since
            else ""
        )
        lines.append(field("VM", f"waiting for capacity: {state.gpu} in {where}{waited}"))
    elif phase == "failing":
        lines.append(field("VM", f"GCE cannot create the VM in {where}"))
    else:
        lines.append(field("VM", f"being created in {where} (group {state.name})"))
    if state.zone_errors:
        lines += _error_rows(state)
    attempt = state.attempt
    if attempt:
        lines.append(f"  now: {attempt.zone or 'a zone'}: {attempt.code}: {attempt.message}")
    outside = [zone for zone in state.zones_available if zone not in state.zones]
    if state.zones_available:
        available = ", ".join(state.zones_available)
        lines.append(f"  GCE says these zones have capacity now: {available}")
    if phase == "waiting":
        lines.append(
            "  GCE keeps trying by itself, also after you close the laptop; the run resumes from "
            "the bucket once the VM exists. No VM charges while it waits."
        )
        lines.append(
            "  The group retries the zone it picked; to let it pick again: "
            f"{STOP_COMMAND} && {START_COMMAND}"
        )
        if outside:
            lines.append(
                "  To use a zone outside the group, add it to `zones` (pulumi config set --path "
                f"'zones[{len(state.zones)}]' {outside[0]}) and `pulumi up` (the group is "
                "recreated)."
            )
    codes = {error.code for error in (state.attempt, *state.zone_errors) if error}
    if codes & QUOTA_CODES:
        lines.append(
            "  A quota error is not capacity: retrying does not help. Request GPU quota at "
            "https://console.cloud.google.com/iam-admin/quotas (GPUS_ALL_REGIONS and the region's)."
        )
    return lines
