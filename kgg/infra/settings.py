"""The stack settings: every config key read once, validated, into one frozen object.

`parse_settings` is pure (a dict of raw values in, settings or a SettingsError out) so every
rule is testable without Pulumi; `load_settings` is the thin Pulumi reader around it. Defaults
live only in Pulumi.yaml: a key missing here is a key missing there.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kgg.infra.catalogue import (
    CURRENT_GPUS,
    GPUS,
    IMAGES,
    ZONE_REGIONS,
    GpuSpec,
    hourly_cost_usd,
    looks_like_machine_type,
)

# Where `pulumi config set allowedSourceRanges` gets the caller's own address from.
MY_IP_COMMAND = "curl -s https://checkip.amazonaws.com"
ALLOW_MY_ADDRESS = f"pulumi config set --path 'allowedSourceRanges[0]' \"$({MY_IP_COMMAND})/32\""
# Ranges that together reach more addresses than a /8 (16.7 million) open the notebook to a
# large part of the internet: worth a loud warning even when no single range is 0.0.0.0/0.
WIDE_OPEN_ADDRESSES = 2**24
IPV4_ADDRESSES = 2**32
_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")


# Google's IAP TCP-forwarding range: the only source `notebookAccess: iap` lets reach the VM.
# https://cloud.google.com/iap/docs/using-tcp-forwarding#create-firewall-rule
IAP_SOURCE_RANGE = "35.235.240.0/20"
NOTEBOOK_ACCESS = ("public", "iap")


class SettingsError(ValueError):
    """A config value that cannot work; the message names the value and the fix."""


@dataclass(frozen=True)
class StackSettings:
    project: str
    region: str
    # The zones the group may create the VM in (one at a time); GCE picks one with capacity.
    zones: tuple[str, ...]
    gpu_type: str
    gpu_count: int
    machine_type: str
    boot_disk_size_gb: int
    image: str
    spot: bool
    allowed_source_ranges: tuple[str, ...]
    notebook_port: int
    idle_shutdown_minutes: int
    shutdown_after_training: bool
    run_training: bool
    data_path: str
    training_args: tuple[str, ...]
    keep_bucket_on_destroy: bool
    labels: tuple[tuple[str, str], ...]
    # public: the notebook port from allowedSourceRanges; iap: from Google's IAP range only,
    # reached with `kgg notebook` (an IAP tunnel).
    notebook_access: str = "public"

    @property
    def estimated_hourly_usd(self) -> float | None:
        """The catalogue price of the VM (on-demand or spot) per hour; None where it has none."""
        return hourly_cost_usd(self.gpu, self.machine_type, self.gpu_count, self.spot)

    @property
    def notebook_source_ranges(self) -> tuple[str, ...]:
        """Who the notebook firewall admits."""
        if self.notebook_access == "iap":
            return (IAP_SOURCE_RANGE,)
        return self.allowed_source_ranges

    @property
    def gpu(self) -> GpuSpec:
        return GPUS[self.gpu_type]

    @property
    def gpus_attached(self) -> int:
        """GPUs the VM really gets (bundled machine types fix the count)."""
        return self.gpu.gpus_in(self.machine_type, self.gpu_count)

    @property
    def reachable_addresses(self) -> int:
        """How many addresses the notebook firewall admits (overlapping ranges counted once)."""
        networks = ipaddress.collapse_addresses(
            ipaddress.IPv4Network(cidr) for cidr in self.allowed_source_ranges
        )
        return sum(network.num_addresses for network in networks)

    @property
    def widely_open(self) -> bool:
        return self.notebook_access == "public" and self.reachable_addresses > WIDE_OPEN_ADDRESSES

    @property
    def zones_without_gpu(self) -> tuple[str, ...]:
        """Chosen zones the catalogue says do not offer the GPU (it may be out of date, so these
        are warned about, not refused: GCE gives the final answer)."""
        offered = self.gpu.zones_in(self.region)
        if offered is None:
            return ()
        return tuple(zone for zone in self.zones if zone not in offered)


def _require(raw: Mapping[str, Any], key: str) -> Any:
    if key not in raw or raw[key] is None:
        raise SettingsError(f"config key {key!r} is missing; it is declared in Pulumi.yaml")
    return raw[key]


def _as_int(raw: Mapping[str, Any], key: str, minimum: int, maximum: int) -> int:
    value = _require(raw, key)
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{key} {value!r} is not a whole number") from None
    if isinstance(value, bool) or str(number) != str(value).strip():
        raise SettingsError(f"{key} {value!r} is not a whole number")
    if not minimum <= number <= maximum:
        raise SettingsError(f"{key} {number} is out of range; use {minimum} to {maximum}")
    return number


def _as_bool(raw: Mapping[str, Any], key: str) -> bool:
    value = _require(raw, key)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"true", "false"}:
        return text == "true"
    raise SettingsError(f"{key} {value!r} is not true or false")


def _as_list(raw: Mapping[str, Any], key: str) -> list[Any]:
    value = _require(raw, key)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise SettingsError(
                f"{key} {value!r} is not a list; set it with --path "
                f"(`pulumi config set --path '{key}[0]' VALUE`)"
            ) from None
    if not isinstance(value, list):
        raise SettingsError(f"{key} {value!r} is not a list")
    return value


def _as_mapping(raw: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = _require(raw, key)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = None
    if not isinstance(value, dict):
        raise SettingsError(
            f"{key} {raw[key]!r} is not a map; set entries with "
            f"`pulumi config set --path '{key}.team' ml`"
        )
    return value


def _gpu(gpu_type: str) -> GpuSpec:
    spec = GPUS.get(gpu_type)
    if spec is None:
        raise SettingsError(
            f"gpuType {gpu_type!r} is not a GCE GPU this tool knows; "
            f"use one of {list(CURRENT_GPUS)}"
        )
    if spec.retired:
        raise SettingsError(
            f"gpuType {gpu_type!r} ({spec.display_name}) is retired on GCE since {spec.retired}; "
            "use nvidia-tesla-t4 (the closest N1 replacement) or nvidia-l4 "
            "(`pulumi config set gpuType nvidia-tesla-t4`)"
        )
    return spec


def _machine_type(spec: GpuSpec, value: str) -> str:
    machine_type = value.strip() or spec.default_machine_type
    if not looks_like_machine_type(machine_type):
        raise SettingsError(f"machineType {machine_type!r} is not a GCE machine type name")
    if not spec.fits_machine_type(machine_type):
        if spec.attach == "bundled":
            allowed = sorted(spec.bundled_machine_types)
            fix = f"{spec.accelerator} comes bundled in {allowed}"
        else:
            fix = f"{spec.accelerator} attaches only to N1 machine types such as n1-highmem-4"
        raise SettingsError(
            f"machineType {machine_type!r} cannot carry {spec.accelerator}: "
            f"{fix} (`pulumi config set machineType {spec.default_machine_type}`)"
        )
    return machine_type


def _gpu_count(spec: GpuSpec, machine_type: str, count: int) -> int:
    if spec.attach == "bundled":
        bundled = spec.bundled_machine_types[machine_type]
        if count not in (1, bundled):
            raise SettingsError(
                f"gpuCount {count} does not match machineType {machine_type!r}, which brings "
                f"{bundled}x {spec.accelerator}; pick the machine type for the count instead "
                f"(one of {sorted(spec.bundled_machine_types)})"
            )
        return bundled
    if count not in spec.counts:
        raise SettingsError(
            f"gpuCount {count} is not offered for {spec.accelerator}; "
            f"use one of {list(spec.counts)}"
        )
    return count


def _source_ranges(values: list[Any]) -> tuple[str, ...]:
    if not values:
        raise SettingsError(
            "allowedSourceRanges is empty: say who may reach the notebook. To allow only "
            "your own address:\n"
            f"  {ALLOW_MY_ADDRESS}"
        )
    cidrs = []
    for value in values:
        try:
            network = ipaddress.ip_network(str(value).strip(), strict=True)
        except ValueError as error:
            raise SettingsError(
                f"allowedSourceRanges entry {value!r} is not a CIDR range "
                f"such as 203.0.113.7/32 ({error})"
            ) from None
        if network.version != 4:
            # The VM has only an IPv4 address, and GCE refuses a rule that mixes both families.
            raise SettingsError(
                f"allowedSourceRanges entry {value!r} is IPv6; the VM is reachable over IPv4 "
                f"only, so give your IPv4 address: {ALLOW_MY_ADDRESS}"
            )
        cidrs.append(str(network))
    return tuple(cidrs)


def _zone_in_region(region: str, zone: str, key: str) -> str:
    if not isinstance(zone, str) or not re.fullmatch(rf"{re.escape(region)}-[a-z][a-z0-9]*", zone):
        fix = (
            f"pulumi config set gcp:zone {region}-a"
            if key == "gcp:zone"
            else f"pulumi config set --path 'zones[0]' {region}-a"
        )
        raise SettingsError(
            f"{key} {zone!r} is not in gcp:region {region!r}; the static IP is regional, "
            f"so the VM must be in the same region (for example `{fix}`)"
        )
    return zone


def _zones(raw: Mapping[str, Any], spec: GpuSpec, region: str, legacy_zone: str) -> tuple[str, ...]:
    """`zones` when set; else `gcp:zone` as a one-zone list (stacks made before `zones`); else
    every zone of the region that offers the GPU, from the catalogue."""
    listed = _as_list(raw, "zones")
    if listed:
        return tuple(dict.fromkeys(_zone_in_region(region, zone, "zones entry") for zone in listed))
    if legacy_zone:
        return (_zone_in_region(region, legacy_zone, "gcp:zone"),)
    offered = spec.zones_in(region)
    if offered is None:
        raise SettingsError(
            f"the GPU catalogue has no zone list for gcp:region {region!r} (it knows "
            f"{list(ZONE_REGIONS)}); name the zones that offer {spec.accelerator} yourself: "
            f"`pulumi config set --path 'zones[0]' {region}-a` (list them with "
            f'`gcloud compute accelerator-types list --filter="name={spec.accelerator} AND '
            f'zone~^{region}-"`)'
        )
    if not offered:
        regions = sorted(spec.zones)
        raise SettingsError(
            f"gpuType {spec.accelerator!r} is not offered in gcp:region {region!r}; pick one of "
            f"{regions} (`pulumi config set gcp:region {regions[0]}`)"
        )
    return offered


def _refuse_control_characters(key: str, value: str) -> str:
    """`value` unchanged when it holds no control characters: a newline in a value that reaches
    the VM's scripts or env files would start a line of its own there (`LD_PRELOAD=...`)."""
    if not value.isprintable():
        raise SettingsError(
            f"{key} {value!r} contains a control character (newline, tab, escape, ...); remove it"
        )
    return value


def _labels(values: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    labels = []
    for key, value in sorted(values.items()):
        text = str(value)
        # fullmatch: `$` in match() would let a trailing newline through.
        if not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(text):
            raise SettingsError(
                f"label {key!r}={text!r} is not a valid GCE label: lower-case "
                "letters, digits, '-' and '_', keys start with a letter"
            )
        labels.append((key, text))
    return tuple(labels)


def _data_path(value: str) -> str:
    path = _refuse_control_characters("dataPath", value).strip().strip("/")
    if not path or path.startswith("gs:") or ".." in path.split("/"):
        raise SettingsError(
            f"dataPath {value!r} must be a prefix inside the stack's bucket, "
            "such as data/plant-seedlings"
        )
    return path


def _notebook_access(value: Any) -> str:
    text = str(value).strip().lower()
    if text not in NOTEBOOK_ACCESS:
        raise SettingsError(
            f"notebookAccess {value!r} is not one of {list(NOTEBOOK_ACCESS)}; `iap` keeps the "
            "notebook off the internet (`pulumi config set notebookAccess iap`)"
        )
    return text


def check_webhook(url: str) -> str:
    """notifyWebhook: an https URL with a host (Slack, Discord or any JSON webhook). The error
    never repeats the URL: it is a secret."""
    from urllib.parse import urlsplit

    parts = urlsplit(url.strip())
    if parts.scheme != "https" or not parts.hostname or not url.strip().isprintable():
        raise SettingsError(
            "notifyWebhook is not an https:// URL with a host (value hidden: it is a secret); "
            "set it with `pulumi config set --secret notifyWebhook https://hooks.slack.com/...`"
            " or remove it with `pulumi config rm notifyWebhook`"
        )
    if "@" in parts.netloc:
        # urllib's errors carry the netloc: every failed post would write it to the VM's log,
        # the bucket's copy of it and the status document.
        raise SettingsError(
            "notifyWebhook has a user:password@ part before its host (value hidden: it is a "
            "secret), which would end up in the VM's logs; use the URL the service gives (Slack "
            "and Discord put their token in the path): `pulumi config set --secret notifyWebhook "
            "https://hooks.slack.com/...`"
        )
    return url.strip()


def parse_settings(
    raw: Mapping[str, Any], *, project: str, region: str, zone: str = ""
) -> StackSettings:
    """Validate raw config values (as Pulumi hands them: strings, or parsed JSON). `zone` is
    `gcp:zone`, which older stacks set: it stands for a one-zone `zones` list."""
    if not region:
        raise SettingsError("gcp:region is not set (`pulumi config set gcp:region us-central1`)")
    spec = _gpu(str(_require(raw, "gpuType")).strip())
    machine_type = _machine_type(spec, str(raw.get("machineType") or ""))
    image = str(_require(raw, "image"))
    if image not in IMAGES:
        raise SettingsError(f"image {image!r} is not one of {sorted(IMAGES)}")
    access = _notebook_access(_require(raw, "notebookAccess"))
    listed = _as_list(raw, "allowedSourceRanges")
    return StackSettings(
        project=project,
        region=region,
        zones=_zones(raw, spec, region, zone),
        gpu_type=spec.accelerator,
        gpu_count=_gpu_count(spec, machine_type, _as_int(raw, "gpuCount", 1, 16)),
        machine_type=machine_type,
        boot_disk_size_gb=_as_int(raw, "bootDiskSizeGb", 50, 65536),
        image=image,
        spot=_as_bool(raw, "spot"),
        # With iap nobody reaches the port directly: the ranges are optional (and unused).
        allowed_source_ranges=_source_ranges(listed) if listed or access == "public" else (),
        notebook_access=access,
        notebook_port=_as_int(raw, "notebookPort", 1024, 65535),
        idle_shutdown_minutes=_as_int(raw, "idleShutdownMinutes", 0, 7 * 24 * 60),
        shutdown_after_training=_as_bool(raw, "shutdownAfterTraining"),
        run_training=_as_bool(raw, "runTraining"),
        data_path=_data_path(str(_require(raw, "dataPath"))),
        training_args=tuple(
            _refuse_control_characters("trainingArgs entry", str(arg))
            for arg in _as_list(raw, "trainingArgs")
        ),
        keep_bucket_on_destroy=_as_bool(raw, "keepBucketOnDestroy"),
        labels=_labels(_as_mapping(raw, "labels")),
    )


CONFIG_KEYS = (
    "zones", "gpuType", "gpuCount", "machineType", "bootDiskSizeGb", "image", "spot",
    "allowedSourceRanges", "notebookPort", "idleShutdownMinutes", "shutdownAfterTraining",
    "runTraining", "dataPath", "trainingArgs", "keepBucketOnDestroy", "labels", "notebookAccess",
)  # fmt: skip
