"""Peak FLOP/s from /proc/cpuinfo text and nvidia-smi parsing, on sample outputs."""

from __future__ import annotations

from datetime import datetime

import pytest

from bench import hardware

AMD_FLAGS = "fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx avx2 avx512f avx512bw avx512_bf16 hypervisor"
INTEL_FLAGS = "fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx avx2 avx512f avx512dq ht hypervisor"


def cpuinfo(
    count: int, model: str, vendor: str, family: int, flags: str, cores: int, siblings: int
) -> str:
    block = (
        "processor\t: {n}\nvendor_id\t: {vendor}\ncpu family\t: {family}\n"
        "model name\t: {model}\ncpu MHz\t\t: 2596.128\nphysical id\t: 0\n"
        "siblings\t: {siblings}\ncpu cores\t: {cores}\nflags\t\t: {flags}\n"
    )
    return "\n".join(
        block.format(
            n=n, vendor=vendor, family=family, model=model, siblings=siblings, cores=cores,
            flags=flags,
        )
        for n in range(count)
    )  # fmt: skip


EPYC_2 = cpuinfo(2, "AMD EPYC", "AuthenticAMD", 25, AMD_FLAGS, cores=2, siblings=2)
XEON_4_HT = cpuinfo(
    4, "Intel(R) Xeon(R) CPU @ 2.20GHz", "GenuineIntel", 6, INTEL_FLAGS, cores=2, siblings=4
)


def test_parses_the_cores_threads_and_clock_of_a_two_vcpu_epyc():
    cpu = hardware.parse_cpuinfo(EPYC_2)
    assert (cpu.logical_cpus, cpu.physical_cores, cpu.threads_per_core) == (2, 2, 1)
    assert cpu.mhz == pytest.approx(2596.128)
    assert cpu.hypervisor and "avx512f" in cpu.flags


def test_zen4_counts_two_256_bit_fma_pipes_even_with_avx512():
    cpu = hardware.parse_cpuinfo(EPYC_2)
    assert hardware.flops_per_cycle(cpu)[0] == 32


def test_epyc_peak_is_cores_times_cpuinfo_mhz_times_32():
    peak = hardware.peak(hardware.parse_cpuinfo(EPYC_2), usable_cpus=2)
    assert peak.flops == pytest.approx(2 * 2.596128e9 * 32)
    assert peak.clock_source.startswith("/proc/cpuinfo")
    assert peak.formula().endswith("x 32 fp32 FLOPs/cycle = 166.2 GFLOP/s")


def test_hyperthreads_count_once_and_the_rated_clock_wins_over_cpu_mhz():
    peak = hardware.peak(hardware.parse_cpuinfo(XEON_4_HT), usable_cpus=4)
    assert peak.cores == 2
    assert peak.clock_ghz == pytest.approx(2.2)
    assert peak.flops_per_cycle == 64
    assert peak.flops == pytest.approx(2 * 2.2e9 * 64)


def test_cpufreq_max_is_preferred_when_the_kernel_exposes_it():
    peak = hardware.peak(hardware.parse_cpuinfo(EPYC_2), usable_cpus=2, cpufreq_max_khz=3_700_000)
    assert peak.clock_ghz == pytest.approx(3.7)
    assert peak.clock_source == "cpufreq cpuinfo_max_freq"


def test_avx2_without_avx512_is_32_and_avx_without_fma_is_16():
    avx2 = cpuinfo(1, "x", "GenuineIntel", 6, "sse avx avx2 fma", cores=1, siblings=1)
    avx = cpuinfo(1, "x", "GenuineIntel", 6, "sse avx", cores=1, siblings=1)
    assert hardware.flops_per_cycle(hardware.parse_cpuinfo(avx2))[0] == 32
    assert hardware.flops_per_cycle(hardware.parse_cpuinfo(avx))[0] == 16


def test_text_without_processors_is_refused():
    with pytest.raises(ValueError, match="processor"):
        hardware.parse_cpuinfo("MemTotal: 1 kB\n")


def test_gpu_query_rows_parse_to_name_capability_memory_driver():
    gpus = hardware.parse_gpu_query(
        "Tesla T4, 7.5, 15360, 580.95.05\nNVIDIA L4, 8.9, 23034, 580.1\n"
    )
    assert gpus[0] == hardware.GpuInfo("Tesla T4", 7.5, 15360, "580.95.05")
    assert gpus[1].compute_capability == 8.9


def test_utilisation_samples_keep_only_parseable_lines_inside_the_window():
    text = (
        "2026/11/27 10:00:00.000, 10\n"
        "2026/11/27 10:00:01.000, 95\n"
        "2026/11/27 10:00:01.500, [N/A]\n"
        "2026/11/27 10:00:02.000, 97\n"
        "2026/11/27 10:00:0"
    )
    samples = hardware.parse_utilization(text)
    assert [value for _, value in samples] == [10, 95, 97]
    start = datetime(2026, 11, 27, 10, 0, 0, 500000).timestamp()
    end = datetime(2026, 11, 27, 10, 0, 2).timestamp()
    assert hardware.utilization_in(samples, start, end) == [95, 97]


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("Tesla T4", "nvidia-tesla-t4"),
        ("NVIDIA L4", "nvidia-l4"),
        ("NVIDIA A100-SXM4-40GB", "nvidia-tesla-a100"),
        ("NVIDIA A100-SXM4-80GB", "nvidia-a100-80gb"),
        ("NVIDIA H100 80GB HBM3", "nvidia-h100-80gb"),
        ("Tesla V100-SXM2-16GB", "nvidia-tesla-v100"),
        ("Quadro RTX 8000", None),
    ],
)
def test_nvidia_smi_names_map_to_catalogue_accelerators(name: str, key: str | None):
    assert hardware.gpu_catalogue_key(name) == key
