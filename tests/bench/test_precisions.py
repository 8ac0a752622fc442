"""The benchmark's rows per precision and XLA setting, its precision target, and the GPU run's
report assembled from given measurements (no GPU here: its measuring parts are replaced, the
arithmetic and the targets are the real ones)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import common, estimate, gpu, hardware, measure, precisions, run
from bench.precisions import Measured, Setting
from bench.report import Report
from kgg.job.runtime import Precision

SIZES = estimate.Sizes(3801, 949, 794)
ZEN3 = frozenset({"avx2", "fma"})
ZEN4 = frozenset({"avx2", "fma", "avx512f", "avx512_bf16"})


def _steps(images_per_second: float) -> measure.Steps:
    return measure.Steps(32 / images_per_second, 4, 32, (0.0, 1.0), 2.0)


def _measured(setting: Setting, speed: float, utilisation: float | None = None) -> Measured:
    """Rates of a CPU like the build machine's, all multiplied by `speed`."""
    return Measured(
        setting,
        features=_steps(7.5 * speed),
        last_block=_steps(50 * speed),
        head_epoch_s=0.5,
        finetune=_steps(27 * speed),
        guide=_steps(2 * speed),
        forward=_steps(7 * speed),
        training=_steps(2 * speed),
        utilisation=utilisation,
    )


def test_settings_measure_float32_first_and_mark_the_jobs_choice() -> None:
    chosen = precisions.settings(["float32", "bfloat16", "auto"], "mixed_bfloat16")
    assert [s.label for s in chosen] == ["float32", "mixed_bfloat16 (auto)"]
    chosen = precisions.settings(["float32", "bfloat16", "auto"], "float32")
    assert [s.label for s in chosen] == ["float32 (auto)", "mixed_bfloat16"]


def test_gpu_run_compares_mixed_precision_and_xla_against_what_the_job_runs() -> None:
    labels = [s.label for s in gpu.gpu_settings("mixed_bfloat16", job_xla=True)]
    assert labels == ["float32 + XLA", "mixed_bfloat16 + XLA (auto)", "mixed_bfloat16"]
    labels = [s.label for s in gpu.gpu_settings("float32", job_xla=True)]  # a P100
    assert labels == ["float32 + XLA (auto)", "float32"]


@pytest.mark.parametrize(
    ("name", "tflops"),
    [("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756), ("NVIDIA H200", 989),
     ("NVIDIA A100-SXM4-40GB", 312), ("NVIDIA L4", 121), ("Tesla T4", 65),
     ("Tesla V100-SXM2-16GB", 125), ("Tesla V100-PCIE-16GB", 112), ("Tesla K80", None)],
)  # fmt: skip
def test_dense_16bit_peak_by_nvidia_smi_name(name: str, tflops: float | None) -> None:
    peak = hardware.gpu_16bit_peak_flops(name)
    assert (peak / 1e12 if peak else None) == tflops


def test_each_figure_has_its_row_per_setting_side_by_side() -> None:
    report = Report("full", {})
    measured = [
        _measured(Setting("float32"), 1.0),
        _measured(Setting("mixed_bfloat16", auto=True), 2.0),
    ]
    totals = precisions.add_rows(report, measured, 57.0, 224, 1, 2, (20, 12, 10), SIZES)
    names = [f.name for f in report.figures]
    index = names.index("phase 1: block4 maps (frozen blocks 1-4), float32")
    assert names[index + 1] == "phase 1: block4 maps (frozen blocks 1-4), mixed_bfloat16 (auto)"
    ratio = report.value("fast recipe end to end, mixed_bfloat16 (auto) vs float32")
    fast = {label: t.fast["total"] for label, t in totals.items()}
    assert ratio == pytest.approx(fast["float32"] / fast["mixed_bfloat16 (auto)"])
    assert ratio == pytest.approx(1.94, abs=0.01)  # see the precision target's test


def _targets(auto: Precision, speeds: dict[str, float]) -> dict[str, object]:
    measured = {
        policy: _measured(Setting(policy, auto=policy == auto.policy), speed)
        for policy, speed in speeds.items()
    }
    totals = precisions.add_rows(
        Report("full", {}), list(measured.values()), 57.0, 224, 1, 2, (20, 12, 10), SIZES
    )
    target = run._precision_target(auto, totals, measured)
    return {"status": target.status, "figure": target.figure, "why": target.why}


def test_precision_target_compares_auto_with_float32_in_the_same_run() -> None:
    auto = Precision("mixed_bfloat16", "auto: CPU with AVX512_BF16")
    target = _targets(auto, {"float32": 1.0, "mixed_bfloat16": 2.0})
    assert target["status"] == "PASS"
    # Twice every rate but decoding (97 s of 5,543 images at 57 img/s) and the head epochs.
    assert target["figure"] == pytest.approx(1.94, abs=0.01)
    assert _targets(auto, {"float32": 1.0, "mixed_bfloat16": 1.2})["status"] == "MISS"


def test_precision_target_says_why_when_auto_is_float32() -> None:
    auto = Precision("float32", "auto: CPU without AVX512_BF16/AMX")
    target = _targets(auto, {"float32": 1.0, "mixed_bfloat16": 0.5})
    assert target["status"] == "N/A"
    assert "auto is float32 here (auto: CPU without AVX512_BF16/AMX)" in str(target["why"])
    assert "mixed_bfloat16 0.5" in str(target["why"])  # emulated bfloat16: half the speed


def test_gpu_run_reports_every_target_from_its_measurements(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """What `bench/run.py --gpu` would assemble on an H100 from given rates: mixed precision at
    2.5x float32, XLA 10% faster, phase 2 97% busy, the real job in 150 s."""
    import tensorflow as tf

    from kgg.job import runtime

    h100 = hardware.GpuInfo("NVIDIA H100 80GB HBM3", 9.0, 81559, "580.95")
    monkeypatch.setattr(hardware, "list_gpus", lambda: [h100])
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: ["GPU:0"])
    monkeypatch.setattr(runtime, "local_precision", lambda: Precision("mixed_bfloat16", "auto"))
    monkeypatch.setattr(gpu.dataset, "ensure", lambda *args: {"train": 120, "test": 20})
    pipeline = measure.PipelineResult(120, 1.0, 0.1, 0.01, 0.1)
    monkeypatch.setattr(measure, "input_pipeline", lambda *args: (pipeline, None, None))

    def measured(settings: list[Setting], *args: object, **kwargs: object) -> list[Measured]:
        def speed(s: Setting) -> float:
            return 100 * (2.5 if s.policy != "float32" else 1.0) * (1.1 if s.jit_compile else 1)

        return [_measured(s, speed(s), utilisation=97.0) for s in settings]

    monkeypatch.setattr(precisions, "measure_settings", measured)

    def job(data_root: Path, size: int, cache: Path, log_path: Path) -> float:
        log_path.write_text("done: held-out micro-F1 0.9\n")
        return 150.0

    monkeypatch.setattr(gpu, "end_to_end", job)
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    written: list[Report] = []
    monkeypatch.setattr(common, "write_outputs", lambda report, **kwargs: written.append(report))
    assert gpu.main(common.QUICK, tmp_path / "data") == 0
    (report,) = written
    targets = {t.name: (t.status, t.figure) for t in report.targets}
    assert targets["mixed_bfloat16 vs float32, VGG16 forward"] == ("PASS", pytest.approx(2.5))
    assert targets["GPU utilisation in phase 2, mixed_bfloat16 + XLA (auto)"] == ("PASS", 97.0)
    assert targets["the real job end to end on the full-size data (H100)"] == ("PASS", 150.0)
    # 2,062 img/s x 6.98 GFLOP (blocks 1-4 at 112 px) = 14.4 TFLOP/s of 989: 1.46%.
    assert targets["phase 1 block4 maps vs the dense 16-bit peak"] == (
        "MISS", pytest.approx(1.456, abs=0.001),
    )  # fmt: skip
    assert report.value("phase 2: fine-tuning (fit), mixed_bfloat16") == pytest.approx(1.1)
    assert report.value("retracing warnings in the job's output") == 0


@pytest.mark.parametrize(("emulated", "measured"), [(True, []), (False, ["bfloat16"])])
def test_quick_run_measures_bfloat16_only_where_the_hardware_computes_it(
    monkeypatch: pytest.MonkeyPatch, emulated: bool, measured: list[str]
) -> None:
    """Emulated bfloat16 takes minutes per guide step on a CPU without AVX512_BF16: --quick
    skips it there and says so, and measures it where it is native."""
    from kgg.job import runtime

    def local_precision(requested: str = "auto") -> Precision:
        return runtime.choose_precision(requested, [], ZEN3 if emulated else ZEN4)

    monkeypatch.setattr(runtime, "local_precision", local_precision)
    report = Report(mode="quick", machine={})
    assert run._native(common.QUICK, report) == measured
    notes = [n for n in report.notes if "Not measured" in n]
    assert len(notes) == emulated
    if emulated:
        assert "emulated on this CPU" in notes[0] and "--precisions bfloat16" in notes[0]
