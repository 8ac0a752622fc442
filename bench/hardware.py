"""What the benchmark runs on: CPU model, cores, clock and peak FLOP/s; GPUs via nvidia-smi.

The peak is cores x clock x fp32 FLOPs per cycle, where FLOPs per cycle come from the SIMD width
and FMA units the /proc/cpuinfo flags (and, for AMD, the CPU family) imply. Every assumption is
returned as text so the report states it next to the figure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

CPUFREQ_MAX = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")


@dataclass(frozen=True)
class CpuInfo:
    """The facts of /proc/cpuinfo the peak depends on."""

    model_name: str
    vendor: str
    family: int
    logical_cpus: int
    physical_cores: int
    threads_per_core: int
    mhz: float
    flags: frozenset[str]
    hypervisor: bool


@dataclass(frozen=True)
class Peak:
    """Peak fp32 FLOP/s and how it was computed."""

    flops: float
    cores: int
    clock_ghz: float
    clock_source: str
    flops_per_cycle: int
    assumptions: list[str] = field(default_factory=list)

    def formula(self) -> str:
        return (
            f"{self.cores} cores x {self.clock_ghz:.3f} GHz ({self.clock_source}) x "
            f"{self.flops_per_cycle} fp32 FLOPs/cycle = {self.flops / 1e9:.1f} GFLOP/s"
        )


def parse_cpuinfo(text: str) -> CpuInfo:
    """Parses /proc/cpuinfo text (x86 Linux layout: blank-line separated processor blocks)."""
    blocks = [b for b in text.strip().split("\n\n") if "processor" in b]
    if not blocks:
        raise ValueError("no 'processor' entries in the cpuinfo text; expected /proc/cpuinfo")
    entries = []
    for block in blocks:
        entry: dict[str, str] = {}
        for line in block.splitlines():
            if ":" in line:
                key, _, value = line.partition(":")
                entry[key.strip()] = value.strip()
        entries.append(entry)
    first = entries[0]
    flags = frozenset(first.get("flags", "").split())
    sockets = {e.get("physical id", "0") for e in entries}
    cores_per_socket = int(first.get("cpu cores", len(entries)))
    siblings = int(first.get("siblings", cores_per_socket))
    physical = min(cores_per_socket * len(sockets), len(entries))
    return CpuInfo(
        model_name=first.get("model name", "unknown"),
        vendor=first.get("vendor_id", "unknown"),
        family=int(first.get("cpu family", "0")),
        logical_cpus=len(entries),
        physical_cores=physical,
        threads_per_core=max(1, siblings // max(1, cores_per_socket)),
        mhz=float(first.get("cpu MHz", "0") or 0),
        flags=flags,
        hypervisor="hypervisor" in flags,
    )


def flops_per_cycle(cpu: CpuInfo) -> tuple[int, str]:
    """fp32 FLOPs per cycle per core, and the assumption behind the number.

    An FMA is 2 FLOPs per lane; a 256-bit register holds 8 fp32 lanes, a 512-bit one 16."""
    flags = cpu.flags
    if cpu.vendor == "AuthenticAMD" and "fma" in flags and "avx2" in flags:
        if cpu.family >= 0x1A:
            return 64, "AMD family 26 (Zen 5): 2 FMA pipes x 512-bit x 2 = 64 fp32 FLOPs/cycle"
        # Zen 2/3/4 have 2 FMA pipes of 256 bits; Zen 4 runs AVX-512 as two 256-bit halves.
        # https://www.amd.com/en/products/processors/server/epyc/4th-generation-9004-and-8004-series.html
        return 32, (
            f"AMD family {cpu.family} (Zen 2-4): 2 FMA pipes x 256-bit (AVX-512 double-pumped "
            "on Zen 4) x 2 = 32 fp32 FLOPs/cycle"
        )
    if "avx512f" in flags:
        return 64, "AVX-512 with 2 FMA units assumed (Xeon Gold 6xxx/Platinum; 1-unit parts: 32)"
    if "avx2" in flags and "fma" in flags:
        return 32, "AVX2 + FMA with 2 FMA units assumed: 2 x 8 lanes x 2 = 32 fp32 FLOPs/cycle"
    if "avx" in flags:
        return 16, "AVX without FMA: one 8-lane add and one 8-lane multiply per cycle = 16"
    return 8, "SSE only: one 4-lane add and one 4-lane multiply per cycle = 8"


def clock_ghz(cpu: CpuInfo, cpufreq_max_khz: int | None = None) -> tuple[float, str]:
    """The clock for the peak: cpufreq's max if the kernel exposes it, else the model name's
    rated '@ x.xxGHz', else cpuinfo 'cpu MHz' (in a VM: what the hypervisor reports)."""
    if cpufreq_max_khz:
        return cpufreq_max_khz / 1e6, "cpufreq cpuinfo_max_freq"
    rated = re.search(r"@\s*([0-9.]+)\s*GHz", cpu.model_name)
    if rated:
        return float(rated.group(1)), "model name's rated clock"
    if cpu.mhz > 0:
        return cpu.mhz / 1e3, "/proc/cpuinfo 'cpu MHz' (no cpufreq in this VM; turbo not known)"
    raise ValueError("no clock in cpufreq, model name or 'cpu MHz'; cannot compute the peak")


def peak(cpu: CpuInfo, usable_cpus: int, cpufreq_max_khz: int | None = None) -> Peak:
    """Peak fp32 FLOP/s of the cores this process may use.

    Hyperthreads share a core's FMA units, so logical CPUs count only when the CPU reports one
    thread per core."""
    per_cycle, why = flops_per_cycle(cpu)
    ghz, source = clock_ghz(cpu, cpufreq_max_khz)
    if cpu.threads_per_core > 1:
        cores = max(1, min(usable_cpus, cpu.logical_cpus) // cpu.threads_per_core)
        topology = (
            f"{cpu.logical_cpus} logical CPUs = {cpu.physical_cores} physical cores x "
            f"{cpu.threads_per_core} threads: hyperthreads share FMA units, physical cores counted"
        )
    else:
        cores = min(usable_cpus, cpu.logical_cpus)
        topology = (
            f"{cpu.logical_cpus} logical CPUs reported as {cpu.physical_cores} cores x 1 thread"
        )
        if cpu.hypervisor:
            topology += (
                " (a VM: the host may back vCPUs with hyperthreads, which would halve the "
                "real peak; an achieved rate above half the peak rules that out)"
            )
    return Peak(
        flops=cores * ghz * 1e9 * per_cycle,
        cores=cores,
        clock_ghz=ghz,
        clock_source=source,
        flops_per_cycle=per_cycle,
        assumptions=[why, topology],
    )


def read_cpu() -> tuple[CpuInfo, Peak]:
    """This machine's CpuInfo and Peak."""
    cpu = parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    khz = int(CPUFREQ_MAX.read_text().strip()) if CPUFREQ_MAX.is_file() else None
    usable = len(os.sched_getaffinity(0))
    return cpu, peak(cpu, usable, khz)


# --- GPUs -----------------------------------------------------------------------------------

NVIDIA_SMI_QUERY = "name,compute_cap,memory.total,driver_version"


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: float
    memory_mib: int
    driver: str


def parse_gpu_query(text: str) -> list[GpuInfo]:
    """Rows of `nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version
    --format=csv,noheader,nounits`."""
    gpus = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4:
            raise ValueError(f"nvidia-smi row {line!r} has {len(parts)} fields, expected 4")
        name, cc, memory, driver = parts
        gpus.append(GpuInfo(name, float(cc), int(float(memory)), driver))
    return gpus


def parse_utilization(text: str) -> list[tuple[datetime, int]]:
    """(time, GPU utilisation %) samples from `nvidia-smi --query-gpu=timestamp,utilization.gpu
    --format=csv,noheader,nounits -lms N` output, e.g. '2026/11/27 10:00:00.123, 97'.

    Lines that do not parse ([N/A], a header, a cut last line) are dropped."""
    samples = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 2 or not parts[1].rstrip(" %").isdigit():
            continue
        try:
            stamp = datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f")
        except ValueError:
            continue
        samples.append((stamp, int(parts[1].rstrip(" %"))))
    return samples


def utilization_in(samples: list[tuple[datetime, int]], start: float, end: float) -> list[int]:
    """The samples taken between two time.time() instants (nvidia-smi stamps local time)."""
    first, last = datetime.fromtimestamp(start), datetime.fromtimestamp(end)
    return [value for stamp, value in samples if first <= stamp <= last]


def list_gpus() -> list[GpuInfo]:
    """The GPUs nvidia-smi sees; none when nvidia-smi is missing or fails (no driver)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={NVIDIA_SMI_QUERY}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    return parse_gpu_query(out)


class UtilizationSampler:
    """Samples GPU utilisation with `nvidia-smi -lms` in the background while a phase runs."""

    def __init__(self, interval_ms: int = 200) -> None:
        self.interval_ms = interval_ms
        self._process: subprocess.Popen[str] | None = None
        self.samples: list[tuple[datetime, int]] = []

    def __enter__(self) -> UtilizationSampler:
        self._process = subprocess.Popen(
            [
                "nvidia-smi",
                "--query-gpu=timestamp,utilization.gpu",
                "--format=csv,noheader,nounits",
                f"-lms={self.interval_ms}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._process is not None
        self._process.terminate()
        out, _ = self._process.communicate(timeout=10)
        self.samples = parse_utilization(out)


def gpu_catalogue_key(name: str) -> str | None:
    """The infra catalogue's accelerator for an nvidia-smi name: 'Tesla T4' -> nvidia-tesla-t4."""
    lowered = name.lower()
    table = [
        ("h100", "nvidia-h100-80gb"),
        ("a100", "nvidia-a100-80gb" if "80gb" in lowered else "nvidia-tesla-a100"),
        ("l4", "nvidia-l4"),
        ("t4", "nvidia-tesla-t4"),
        ("v100", "nvidia-tesla-v100"),
        ("p100", "nvidia-tesla-p100"),
        ("p4", "nvidia-tesla-p4"),
        ("k80", "nvidia-tesla-k80"),
    ]
    for token, key in table:
        if re.search(rf"\b{token}\b", lowered):
            return key
    return None


# Dense (no sparsity) float16/bfloat16 Tensor Core peak of each GPU, TFLOP/s, from NVIDIA's
# datasheets (they quote twice these "with sparsity" for A100 and newer): what the features
# phase is measured against. First match of the lowered nvidia-smi name wins.
GPU_16BIT_DENSE_TFLOPS = (
    ("h200", 989.0),  # H200 SXM: BF16 1,979 with sparsity
    ("h100 nvl", 835.0),  # 1,671 with sparsity
    ("h100 pcie", 756.0),  # 1,513 with sparsity
    ("h100", 989.0),  # H100 SXM5, nvidia-smi "NVIDIA H100 80GB HBM3": 1,979 with sparsity
    ("a100", 312.0),
    ("l4", 121.0),  # 242 with sparsity
    ("v100-pcie", 112.0),
    ("v100", 125.0),  # SXM2
    ("t4", 65.0),  # float16 only: no bfloat16 Tensor Cores
)


def gpu_16bit_peak_flops(name: str) -> float | None:
    """The GPU's dense 16-bit Tensor Core peak in FLOP/s; None for a GPU not in the table."""
    lowered = name.lower()
    for token, tflops in GPU_16BIT_DENSE_TFLOPS:
        if re.search(rf"\b{re.escape(token)}\b", lowered):
            return tflops * 1e12
    return None
