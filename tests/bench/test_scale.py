"""The scale part (issue 23): its plan, its rows side by side, its targets, the projection onto
the default T4 VM, the disk sampler, the probe's decode report and the small sources."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from PIL import Image

from bench import dataset, estimate, flops, hardware, probe, scale
from bench.report import Report

GIB = 1024**3


def _run(factor: int, rss_gib: float | None, cache_gb: float, decode_s: float | None):
    return scale.ScaleRun(
        factor, 4750 * factor, 794 * factor, None if rss_gib is None else rss_gib * GIB,
        int(cache_gb * 1e9), decode_s, 60.0 * factor, "last lines of the job",
    )  # fmt: skip


def test_the_full_plan_runs_the_seeds_data_and_ten_times_it_at_the_jobs_size() -> None:
    plan = scale.FULL
    assert [plan.counts(f) for f in plan.factors] == [(4750, 794), (47500, 7940)]
    assert plan.image_size == 224  # the job's default: caches and maps of full size
    assert max(high for _, _, high in plan.size_mix) <= 64  # small sources: seconds to write
    assert scale.data_root(Path("c"), plan, 10) != scale.data_root(Path("c"), plan, 1)


def test_rows_sit_side_by_side_and_flat_memory_with_linear_decoding_passes() -> None:
    report = Report("scale", {})
    scale.add_rows(report, [_run(1, 2.0, 3.0, 30.0), _run(10, 2.4, 24.0, 300.0)])
    names = [figure.name for figure in report.figures]
    assert names == [
        "peak RSS, 1x (4750 train + 794 test)", "peak RSS, 10x (47500 train + 7940 test)",
        "cache on disk, 1x (4750 train + 794 test)", "cache on disk, 10x (47500 train + 7940 test)",
        "decode, 1x (4750 train + 794 test)", "decode, 10x (47500 train + 7940 test)",
    ]  # fmt: skip
    assert [figure.value for figure in report.figures] == pytest.approx(
        [2.0, 2.4, 3.0, 24.0, 30.0, 300.0]
    )
    rss, decode = report.targets
    assert (rss.figure, rss.threshold, rss.status) == (pytest.approx(1.2), 1.3, "PASS")
    assert (decode.figure, decode.threshold, decode.status) == (pytest.approx(10.0), 11, "PASS")


def test_memory_that_grows_with_the_data_misses_its_target() -> None:
    report = Report("scale", {})
    scale.add_rows(report, [_run(1, 2.0, 3.0, 30.0), _run(10, 6.8, 24.0, 400.0)])
    assert [target.status for target in report.targets] == ["MISS", "MISS"]


def test_a_failed_run_is_named_with_its_log_and_leaves_its_targets_unmeasured() -> None:
    report = Report("scale", {})
    scale.add_rows(report, [_run(1, 2.0, 3.0, 30.0), _run(10, None, 8.0, None)])
    assert [target.status for target in report.targets] == ["N/A", "N/A"]
    assert report.not_measured == ["scale 10x: the job failed:\nlast lines of the job"]


def test_the_t4_projection_is_every_phase_at_the_cards_peak_plus_decoding_on_its_vcpus() -> None:
    peak = hardware.gpu_16bit_peak_flops("Tesla T4")
    assert peak == 65e12
    rates = scale.t4_rates(224, decode_ips=400.0)
    layers = flops.vgg16_layers(224)
    trunk = [layer for layer in layers if not layer.name.startswith("block5")]
    block5 = [layer for layer in layers if layer.name.startswith("block5")]
    assert rates.features_ips == pytest.approx(peak / flops.forward_flops(trunk))
    assert rates.last_block_ips == pytest.approx(peak / flops.forward_flops(block5))
    assert rates.finetune_ips == pytest.approx(peak / flops.training_flops(block5))
    assert (rates.decode_ips, rates.views) == (400.0, 2)

    report = Report("scale", {})
    sizes = estimate.Sizes(38000, 9500, 7940)
    run = _run(10, 2.5, 24.0, 300.0)
    scale.add_projection(report, run, sizes, 100.0, 500_000.0, 224, (12, 10))
    total, rss, disk = report.figures
    expected = estimate.fast_seconds(sizes, scale.t4_rates(224, 4 * 100.0), 12, 10)
    assert total.value == pytest.approx(expected["total"])
    assert "decode at 4 vCPUs x 100 img/s per core" in total.how
    assert rss.value == pytest.approx(2.5 * GIB / 1e9)
    # The caches as measured plus a mirror of every file at the full-size data's mean size.
    assert disk.value == pytest.approx((24e9 + (47500 + 7940) * 500_000) / 1e9)
    assert report.targets[-1].threshold == scale.VM_MEMORY_GB
    assert report.targets[-1].status == "PASS"


def test_without_a_decode_rate_the_projection_leaves_decoding_out() -> None:
    report = Report("scale", {})
    sizes = estimate.Sizes(38000, 9500, 7940)
    scale.add_projection(report, _run(10, 2.5, 24.0, 300.0), sizes, None, None, 224, (12, 10))
    total, _, disk = report.figures
    parts = estimate.fast_seconds(sizes, scale.t4_rates(224, None), 12, 10)
    assert total.value == pytest.approx(parts["total"] - parts["decode"])
    assert "decode not included" in total.how
    assert disk.value is None


def test_disk_peak_sees_a_file_that_came_and_went_while_it_sampled(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    folder.mkdir()
    sampler = scale.DiskPeak([folder, tmp_path / "not-yet"], interval=0.01)
    sampler.start()
    (folder / "maps.npy").write_bytes(b"x" * 50_000)
    time.sleep(0.2)
    (folder / "maps.npy").unlink()
    (folder / "images.npy").write_bytes(b"x" * 1_000)
    assert sampler.finish() == 50_000
    assert scale.files_bytes([folder]) == 1_000


def test_probe_reports_the_seconds_and_files_the_job_decoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kgg.job import images as images_lib

    calls: list[int] = []

    def slow_load(root: Path, files: list[str], *args: object, **kwargs: object) -> str:
        calls.append(len(files))
        time.sleep(0.05)
        return "decoded"

    monkeypatch.setattr(images_lib, "load_images", slow_load)
    report = tmp_path / "probe.json"
    probe.time_decoding(report)
    assert images_lib.load_images(Path("test"), ["a.png"] * 3, 32, tmp_path) == "decoded"
    assert images_lib.load_images(Path("train"), ["b.png"] * 5, 32, tmp_path) == "decoded"
    spent = json.loads(report.read_text())
    assert calls == [3, 5]
    assert spent["files"] == 8
    assert 0.1 <= spent["decode_seconds"] < 1.0


def test_small_sources_keep_the_layout_and_their_own_marker(tmp_path: Path) -> None:
    root = tmp_path / "small"
    summary = dataset.ensure(root, 24, 4, seed=5, size_mix=dataset.SMALL_SIZE_MIX)
    sides = [max(Image.open(p).size) for p in root.rglob("*.png")]
    assert len(sides) == 28
    assert min(sides) >= 24 and max(sides) <= 96  # 24..64 px, a third up to 1.5x longer
    assert summary["size_mix"] == [[1.0, 24, 64]]
    # The full-size plan of the same counts is another dataset: regenerated, not reused.
    full = dataset.ensure(root, 24, 4, seed=5)
    assert "size_mix" not in full
    assert max(max(Image.open(p).size) for p in root.rglob("*.png")) > 64
