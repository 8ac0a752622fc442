"""The GPU catalogue: every fact about a GCE GPU that the program, the startup script and the
cost estimate rely on, in one table.

Checked against public sources on CATALOGUE_CHECKED (see shared GCP_FACTS.md). Prices drift and
are only listed where a source gave them; an unknown price stays None rather than a guess.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

CATALOGUE_CHECKED = "2026-11"
PRICES_CHECKED = "2026-07 (Cloud Billing catalog, us-central1)"
# The zones each GPU is offered in, for the regions in ZONE_REGIONS: from the accelerator types
# the Compute Engine API lists, as SkyPilot's catalogue records them (skypilot-org/skypilot-catalog
# catalogs/v8/gcp/vms.csv at 006059e0), read 2026-11; Google's page for the same facts is
# https://cloud.google.com/compute/docs/gpus/gpu-regions-zones. Bundled GPUs: the zones of their
# machine family (a2-highgpu, a2-ultragpu, a3-highgpu, g2-standard).
ZONES_CHECKED = "2026-11 (Compute Engine accelerator types, via SkyPilot's catalogue)"
ZONE_REGIONS = (
    "us-central1", "us-east1", "us-east4", "us-west1", "us-west4", "europe-west1", "europe-west4",
)  # fmt: skip

# A static external IP attached to a running VM; a reserved idle one costs 0.010.
STATIC_IP_USD_PER_HOUR = 0.005

Attach = Literal["guest", "bundled"]


@dataclass(frozen=True)
class GpuSpec:
    """One GPU model as Compute Engine offers it.

    `attach` is "guest" for N1 machines that take the GPU as a guest accelerator, "bundled" for
    accelerator-optimized families (G2/A2/A3) whose machine type brings the GPU.
    """

    accelerator: str
    display_name: str
    attach: Attach
    counts: tuple[int, ...]
    default_machine_type: str
    compute_capability: float
    driver_branch: str
    tensorflow_build: str
    on_demand_usd_per_hour: float | None
    spot_usd_per_hour: float | None
    retired: str | None = None
    # Bundled GPUs: machine type -> GPUs it brings.
    bundled_machine_types: Mapping[str, int] = field(default_factory=dict)
    # Region -> the zones that offer this GPU, for the regions in ZONE_REGIONS (ZONES_CHECKED).
    zones: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def mixed_precision(self) -> bool:
        """mixed_float16 only speeds up Tensor Core GPUs (compute capability 7.0 and newer)."""
        return self.compute_capability >= 7.0

    def fits_machine_type(self, machine_type: str) -> bool:
        if self.attach == "bundled":
            return machine_type in self.bundled_machine_types
        return machine_type.startswith("n1-") and machine_type not in {"f1-micro", "g1-small"}

    def gpus_in(self, machine_type: str, requested: int) -> int:
        """How many GPUs the VM ends up with: bundled types fix the count, N1 takes the request."""
        if self.attach == "bundled":
            return self.bundled_machine_types[machine_type]
        return requested

    def zones_in(self, region: str) -> tuple[str, ...] | None:
        """The zones of `region` that offer this GPU; None where the catalogue has no zone list
        for the region (an empty tuple: the catalogue knows the region and it has none)."""
        if region not in ZONE_REGIONS:
            return None
        return self.zones.get(region, ())


def _zones(**regions: str) -> dict[str, tuple[str, ...]]:
    """`us_central1="abcf"` -> {"us-central1": ("us-central1-a", ..., "us-central1-f")}."""
    table = {}
    for key, letters in regions.items():
        region = key.replace("_", "-")
        table[region] = tuple(f"{region}-{letter}" for letter in letters)
    return table


# Current TF wheels (2.18-2.21) are built for CUDA 12.5 / cuDNN 9.3 and compute capability >= 6.0.
CURRENT_TF = "tensorflow[and-cuda] 2.21 (CUDA 12.5, cuDNN 9.3 wheels)"
# One long-term branch covers Pascal to Hopper; it is the last for Pascal and Volta.
DRIVER_580 = "580"


def _one_per_g(prefix: str) -> dict[str, int]:
    """A2/A3 names end in the GPU count: a2-highgpu-4g brings 4."""
    return {f"{prefix}{n}g": n for n in (1, 2, 4, 8)}


_G2 = {f"g2-standard-{cpus}": 1 for cpus in (4, 8, 12, 16, 32)} | {
    "g2-standard-24": 2,
    "g2-standard-48": 4,
    "g2-standard-96": 8,
}

GPUS: MappingProxyType[str, GpuSpec] = MappingProxyType(
    {
        spec.accelerator: spec
        for spec in (
            GpuSpec(
                accelerator="nvidia-tesla-k80",
                display_name="NVIDIA K80",
                attach="guest",
                counts=(1, 2, 4, 8),
                default_machine_type="n1-highmem-4",
                compute_capability=3.7,
                driver_branch="470",
                tensorflow_build="tensorflow 2.14 (CUDA 11.8), the last with Kepler code",
                on_demand_usd_per_hour=None,
                spot_usd_per_hour=None,
                retired="2024-05-01",
            ),
            GpuSpec(
                accelerator="nvidia-tesla-t4",
                display_name="NVIDIA T4",
                attach="guest",
                counts=(1, 2, 4),
                # The machine of the original 2018 guide.
                default_machine_type="n1-highmem-4",
                compute_capability=7.5,
                driver_branch=DRIVER_580,
                tensorflow_build=CURRENT_TF,
                on_demand_usd_per_hour=0.35,
                # Spot varies daily between ~0.14 and ~0.21: estimate with the upper end.
                spot_usd_per_hour=0.21,
                zones=_zones(
                    us_central1="abcf",
                    us_east1="bcd",
                    us_east4="abc",
                    us_west1="ab",
                    us_west4="ab",
                    europe_west1="bcd",
                    europe_west4="abc",
                ),
            ),
            GpuSpec(
                accelerator="nvidia-tesla-p4",
                display_name="NVIDIA P4",
                attach="guest",
                counts=(1, 2, 4),
                default_machine_type="n1-highmem-4",
                compute_capability=6.1,
                driver_branch=DRIVER_580,
                tensorflow_build=CURRENT_TF,
                on_demand_usd_per_hour=None,
                spot_usd_per_hour=None,
                zones=_zones(us_central1="ac", us_east4="abc", europe_west4="bc"),
            ),
            GpuSpec(
                accelerator="nvidia-tesla-p100",
                display_name="NVIDIA P100",
                attach="guest",
                counts=(1, 2, 4),
                default_machine_type="n1-highmem-4",
                compute_capability=6.0,
                driver_branch=DRIVER_580,
                tensorflow_build=CURRENT_TF,
                on_demand_usd_per_hour=None,
                spot_usd_per_hour=None,
                zones=_zones(
                    us_central1="cf",
                    us_east1="bc",
                    us_west1="ab",
                    europe_west1="bd",
                    europe_west4="a",
                ),
            ),
            GpuSpec(
                accelerator="nvidia-tesla-v100",
                display_name="NVIDIA V100",
                attach="guest",
                counts=(1, 2, 4, 8),
                default_machine_type="n1-highmem-8",
                compute_capability=7.0,
                driver_branch=DRIVER_580,
                tensorflow_build=CURRENT_TF,
                on_demand_usd_per_hour=None,
                spot_usd_per_hour=None,
                zones=_zones(us_central1="abcf", us_east1="bc", us_west1="ab", europe_west4="abc"),
            ),
            GpuSpec(
                accelerator="nvidia-l4",
                display_name="NVIDIA L4",
                attach="bundled",
                counts=(1, 2, 4, 8),
                default_machine_type="g2-standard-4",
                compute_capability=8.9,
                driver_branch=DRIVER_580,
                tensorflow_build=CURRENT_TF,
                # The catalog prices g2 all-in (machine + L4); see MACHINE_PRICES.
                on_demand_usd_per_hour=0.0,
                spot_usd_per_hour=0.0,
                bundled_machine_types=_G2,
                zones=_zones(
                    us_central1="abc",
                    us_east1="bcd",
                    us_east4="ac",
                    us_west1="abc",
                    us_west4="ac",
                    europe_west1="bc",
                    europe_west4="abc",
                ),
            ),
            GpuSpec(
                accelerator="nvidia-tesla-a100",
                display_name="NVIDIA A100 40GB",
                attach="bundled",
                counts=(1, 2, 4, 8, 16),
                default_machine_type="a2-highgpu-1g",
                compute_capability=8.0,
                driver_branch=DRIVER_580,
                tensorflow_build=CURRENT_TF,
                on_demand_usd_per_hour=None,
                spot_usd_per_hour=None,
                bundled_machine_types=_one_per_g("a2-highgpu-") | {"a2-megagpu-16g": 16},
                zones=_zones(us_central1="abcf", us_east1="b", us_west1="b", europe_west4="ab"),
            ),
            GpuSpec(
                accelerator="nvidia-a100-80gb",
                display_name="NVIDIA A100 80GB",
                attach="bundled",
                counts=(1, 2, 4, 8),
                default_machine_type="a2-ultragpu-1g",
                compute_capability=8.0,
                driver_branch=DRIVER_580,
                tensorflow_build=CURRENT_TF,
                on_demand_usd_per_hour=None,
                spot_usd_per_hour=None,
                bundled_machine_types=_one_per_g("a2-ultragpu-"),
                zones=_zones(us_central1="ac", us_east4="c", europe_west4="a"),
            ),
            GpuSpec(
                accelerator="nvidia-h100-80gb",
                display_name="NVIDIA H100 80GB",
                attach="bundled",
                counts=(1, 2, 4, 8),
                default_machine_type="a3-highgpu-1g",
                compute_capability=9.0,
                driver_branch=DRIVER_580,
                tensorflow_build=CURRENT_TF,
                on_demand_usd_per_hour=None,
                spot_usd_per_hour=None,
                bundled_machine_types=_one_per_g("a3-highgpu-"),
                zones=_zones(
                    us_central1="abc",
                    us_east4="abc",
                    us_west1="ab",
                    us_west4="a",
                    europe_west1="bc",
                    europe_west4="bc",
                ),
            ),
        )
    }
)

CURRENT_GPUS = tuple(sorted(name for name, spec in GPUS.items() if spec.retired is None))

# Machine prices (on-demand, spot) in $/h. g2 prices include the L4 they bring.
MACHINE_PRICES: MappingProxyType[str, tuple[float, float]] = MappingProxyType(
    {
        "n1-highmem-4": (0.2366, 0.0834),
        "g2-standard-4": (0.7068, 0.3973),
    }
)


@dataclass(frozen=True)
class BootImage:
    """A GCE image family the startup script supports, and the python3 it ships (the script uses
    it for the Python env when uv.lock's wheels support it, else uv downloads one)."""

    project: str
    family: str
    system_python: str
    # Unsigned (DKMS-built) kernel modules load only with Secure Boot off.
    needs_secure_boot_off: bool = False


# The Deep Learning VM image brings the NVIDIA driver when the instance metadata says
# install-nvidia-driver=True. Debian 12 builds Debian's 535 driver with DKMS at first boot.
IMAGES: MappingProxyType[str, BootImage] = MappingProxyType(
    {
        "ubuntu-2204": BootImage("ubuntu-os-cloud", "ubuntu-2204-lts", system_python="3.10"),
        "debian-12": BootImage(
            "debian-cloud", "debian-12", system_python="3.11", needs_secure_boot_off=True
        ),
        "deeplearning": BootImage(
            "deeplearning-platform-release",
            "common-cu128-ubuntu-2204-nvidia-570",
            system_python="3.10",
        ),
    }
)

_MACHINE_TYPE = re.compile(r"^[a-z][a-z0-9]*-[a-z0-9-]+$")


def looks_like_machine_type(value: str) -> bool:
    return bool(_MACHINE_TYPE.match(value))


def machine_cost_usd(
    spec: GpuSpec | None, machine_type: str, gpu_count: int, spot: bool
) -> float | None:
    """$/h of a machine and its GPUs (`spec` None: no GPU) at Compute Engine's prices, or None
    where a price is not in the catalogue."""
    machine = MACHINE_PRICES.get(machine_type)
    if machine is None:
        return None
    machine_price = machine[1] if spot else machine[0]
    if spec is None:
        return machine_price
    gpu = spec.spot_usd_per_hour if spot else spec.on_demand_usd_per_hour
    if gpu is None:
        return None
    # A g2/a2/a3 machine's price brings its GPUs.
    return machine_price if spec.attach == "bundled" else machine_price + gpu_count * gpu


def hourly_cost_usd(spec: GpuSpec, machine_type: str, gpu_count: int, spot: bool) -> float | None:
    """Estimated $/h of the running VM (machine + GPUs + static IP), or None where a price is
    not in the catalogue. Disk is left out: it is cents a day and also billed while stopped."""
    compute = machine_cost_usd(spec, machine_type, gpu_count, spot)
    return None if compute is None else round(compute + STATIC_IP_USD_PER_HOUR, 4)
