"""Vertex AI custom-training prices ($/h, us-central1) for the machines and GPUs `kgg submit` and
`kgg sweep` ask for: the estimate they print and the cost `kgg runs` shows.

Vertex bills its own rates, not Compute Engine's (kgg/infra/catalogue.py holds those): a machine
type per hour, plus each accelerator per hour, listed apart on Google's page. Only figures a
source gave are here; every other price stays None (shown as unknown), never derived from the
GCE price or another region.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

VERTEX_PRICES_REGION = "us-central1"
VERTEX_PRICES_SOURCE = "https://cloud.google.com/products/gemini-enterprise-agent-platform/pricing"
# The page (formerly cloud.google.com/vertex-ai/pricing) as transcribed on 2026-10-07 by
# api-evangelist/google-vertex-ai plans/google-vertex-ai-plans-pricing.yml ("every price_text was
# found verbatim in the fetched page text"); the n1-standard-4 figure is also quoted from it for
# us-central1 by two projects that read it on 2026-09-06 and 2026-09-08. Looked up 2026-12-03;
# the date is that of the figures.
VERTEX_PRICES_CHECKED = "2026-10-07"
# --scheduling words (kgg/cli/vertex_spec.py STRATEGIES), each priced on its own.
STRATEGIES = ("standard", "spot", "flex-start")


@dataclass(frozen=True)
class VertexPrice:
    """One machine type or accelerator: $/h by scheduling strategy; None where no source gave it.

    Flex-start (Dynamic Workload Scheduler) is billed on SKUs of its own, at a discount Google
    does not publish per machine in the sources read, so it is not the standard price."""

    standard: float | None
    spot: float | None = None
    flex_start: float | None = None

    def for_strategy(self, strategy: str) -> float | None:
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
        return {"standard": self.standard, "spot": self.spot, "flex-start": self.flex_start}[
            strategy
        ]


# Machine types, without their accelerators (the page lists those in a table of their own).
VERTEX_MACHINE_PRICES: MappingProxyType[str, VertexPrice] = MappingProxyType(
    {
        "n1-standard-4": VertexPrice(standard=0.21849885),
    }
)
# Accelerators by MachineSpec.acceleratorType, the page's own names; $/h per GPU.
VERTEX_GPU_PRICES: MappingProxyType[str, VertexPrice] = MappingProxyType(
    {
        "NVIDIA_H100_80GB": VertexPrice(standard=9.79655057),
    }
)


def vertex_usd_per_hour(
    machine_type: str, gpu_type: str | None, gpu_count: int, strategy: str
) -> float | None:
    """$/h of one Vertex AI training machine with `gpu_count` x `gpu_type` (an acceleratorType
    like NVIDIA_TESLA_T4; None or 0: CPU only) under `strategy` (standard, spot, flex-start), at
    us-central1's prices; None when the catalogue lacks any of the prices."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
    machine = VERTEX_MACHINE_PRICES.get(machine_type)
    machine_price = machine.for_strategy(strategy) if machine is not None else None
    if machine_price is None:
        return None
    if gpu_type is None or gpu_count == 0:
        return machine_price
    gpu = VERTEX_GPU_PRICES.get(gpu_type)
    gpu_price = gpu.for_strategy(strategy) if gpu is not None else None
    if gpu_price is None:
        return None
    return machine_price + gpu_count * gpu_price
