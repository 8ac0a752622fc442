"""Precision by hardware (issue 14): the choice per device, capability and CPU flags, the
--precision override, a bfloat16 run on the CPU and its scores against float32's, and a job
whose output carries no TensorFlow warning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from kgg.job.cli import EXIT_USAGE
from kgg.job.config import resolve
from kgg.job.runstate import FAIL_AFTER_ENV
from kgg.job.runtime import choose_precision, cpu_flags
from tests.job.conftest import TinyRun, train_argv, workload, write_tiny_data

REPO = Path(__file__).resolve().parents[2]
ZEN3 = frozenset({"avx", "avx2", "fma"})  # no bfloat16 arithmetic
ZEN4 = ZEN3 | {"avx512f", "avx512_bf16"}
SAPPHIRE_RAPIDS = ZEN3 | {"avx512f", "amx_tile", "amx_bf16"}
# Validation images per class of the comparison runs (10 images per class, 20% validation).
PER_CLASS = 10


@pytest.mark.parametrize(
    ("capabilities", "flags", "policy"),
    [
        ([], ZEN4, "mixed_bfloat16"),  # this project's build machine, when it has AVX512_BF16
        ([], SAPPHIRE_RAPIDS, "mixed_bfloat16"),
        ([], ZEN3, "float32"),  # bfloat16 would be emulated: no faster
        ([], frozenset(), "float32"),  # no /proc/cpuinfo (macOS)
        ([(3, 7)], ZEN4, "float32"),  # K80: no Tensor Cores; the GPU decides, not the CPU
        ([(6, 0)], ZEN3, "float32"),  # P100
        ([(7, 0)], ZEN3, "mixed_float16"),  # V100
        ([(7, 5)], ZEN4, "mixed_float16"),  # T4: float16 Tensor Cores only
        ([(8, 0)], ZEN3, "mixed_bfloat16"),  # A100
        ([(8, 9)], ZEN3, "mixed_bfloat16"),  # L4
        ([(9, 0)], ZEN3, "mixed_bfloat16"),  # H100
        ([(8, 0), (7, 5)], ZEN3, "mixed_float16"),  # the oldest GPU decides
        ([(9, 0), (6, 0)], ZEN3, "float32"),
    ],
)
def test_auto_precision_per_device_capability_and_cpu_flags(
    capabilities: list[tuple[int, int]], flags: frozenset[str], policy: str
) -> None:
    chosen = choose_precision("auto", capabilities, flags)
    assert chosen.policy == policy
    assert chosen.reason.startswith("auto: ")


@pytest.mark.parametrize(
    ("requested", "capabilities", "flags", "policy", "emulated"),
    [
        ("float32", [(9, 0)], ZEN3, "float32", False),
        ("float32", [], ZEN4, "float32", False),
        ("bfloat16", [], ZEN3, "mixed_bfloat16", True),
        ("bfloat16", [(7, 5)], ZEN4, "mixed_bfloat16", True),  # T4 has no bfloat16 Tensor Cores
        ("float16", [(7, 5)], ZEN3, "mixed_float16", False),
        ("float16", [(8, 0)], ZEN3, "mixed_float16", False),
        ("float16", [], ZEN4, "mixed_float16", True),
    ],
)
def test_requested_precision_overrides_auto_and_says_when_it_is_emulated(
    requested: str, capabilities: list, flags: frozenset[str], policy: str, emulated: bool
) -> None:
    chosen = choose_precision(requested, capabilities, flags)
    assert chosen.policy == policy
    assert chosen.reason.startswith(f"--precision {requested}")
    assert ("emulated" in chosen.reason) is emulated
    assert chosen.emulated is emulated


def test_cpu_flags_come_from_the_first_processor_of_proc_cpuinfo() -> None:
    text = "processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\nflags\t: fpu\n"
    assert cpu_flags(text) == frozenset({"fpu", "avx2", "avx512_bf16"})
    assert cpu_flags("") == frozenset()


def test_unknown_precision_is_a_one_line_error_naming_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"--precision 'fp8' is unknown; use one of \['auto'"):
        resolve(data="d", out="o", precision="fp8")
    result = workload("train", "--data", "d", "--out", "o", "--precision", "fp8", cwd=tmp_path)
    assert result.rc == EXIT_USAGE
    assert "argument --precision: invalid choice: 'fp8'" in result.err


def test_precision_is_outside_the_fingerprint_so_a_run_resumes_on_other_hardware() -> None:
    """auto is another policy on another machine type; runs begun before --precision existed
    keep their fingerprint."""
    auto = resolve(data="d", out="o")
    assert auto.precision == "auto"
    assert resolve(data="d", out="o", precision="float32").fingerprint() == auto.fingerprint()


def _tiny_run(root: Path, precision: str, env: dict[str, str] | None = None) -> TinyRun:
    write_tiny_data(root / "data", per_class=PER_CLASS)
    result = workload(*train_argv("--precision", precision), cwd=root, env=env)
    return TinyRun(root, root / "data", result)


@pytest.fixture(scope="module")
def precision_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TinyRun]:
    """The same tiny run (seed, data, options) in float32 and in bfloat16."""
    return {
        precision: _tiny_run(tmp_path_factory.mktemp(precision), precision)
        for precision in ("float32", "bfloat16")
    }


def test_bfloat16_run_on_the_cpu_trains_in_mixed_bfloat16_with_a_float32_head(
    precision_runs: dict[str, TinyRun],
) -> None:
    run = precision_runs["bfloat16"]
    assert run.result.rc == 0, run.result.err
    assert "devices: CPU only, mixed_bfloat16 (--precision bfloat16" in run.result.out
    metrics = json.loads((run.out / "metrics.json").read_text())
    assert metrics["precision"] == "mixed_bfloat16"
    with zipfile.ZipFile(run.out / "model.keras") as archive:
        config = json.loads(archive.read("config.json"))
    policies = _layer_policies(config)
    assert policies["block5_conv3"] == "mixed_bfloat16"
    head = {name: policies[name] for name in ("preprocess", "standardize", "dropout", "species")}
    assert head == dict.fromkeys(head, "float32")
    assert json.loads((run.out / "config.json").read_text())["precision"] == "bfloat16"


def _layer_policies(config: object, found: dict[str, str] | None = None) -> dict[str, str]:
    """layer name -> dtype policy name, from a model.keras config.json (nested models too)."""
    found = {} if found is None else found
    if isinstance(config, dict):
        layer = config.get("config")
        if isinstance(layer, dict) and isinstance(layer.get("dtype"), dict) and "name" in layer:
            found.setdefault(layer["name"], layer["dtype"]["config"]["name"])
        for value in config.values():
            _layer_policies(value, found)
    elif isinstance(config, list):
        for value in config:
            _layer_policies(value, found)
    return found


def test_bfloat16_scores_match_float32_within_one_image(
    precision_runs: dict[str, TinyRun],
) -> None:
    """bfloat16 keeps 8 significant bits (about 3 decimal digits): the two runs round every
    product differently, so a prediction close to a class boundary may flip, but training must
    not suffer. On sets of 6 validation and 3 held-out images, noise is one image; a worse
    bfloat16 run would lose more than that."""
    scores = {
        precision: json.loads((run.out / "metrics.json").read_text())
        for precision, run in precision_runs.items()
    }
    f32, bf16 = scores["float32"], scores["bfloat16"]
    for score_set in (f32, f32["validation"]):
        assert score_set["micro_f1"] > 0.5, "float32 learned nothing: the comparison is void"
    one_validation_image = 1 / f32["validation"]["samples"]
    one_held_out_image = 1 / f32["samples"]
    assert abs(bf16["validation"]["accuracy"] - f32["validation"]["accuracy"]) <= (
        one_validation_image + 1e-9
    )
    assert abs(bf16["accuracy"] - f32["accuracy"]) <= one_held_out_image + 1e-9


def test_cached_block4_maps_are_stored_in_bfloat16_named_by_precision(tmp_path: Path) -> None:
    """A run killed after its features pass keeps its maps: bfloat16 bits, never float16
    (whose range ends at 65504), in a file whose name says the policy."""
    import ml_dtypes

    run = _tiny_run(tmp_path, "bfloat16", env={FAIL_AFTER_ENV: "1"})
    assert run.result.rc == 75, run.result.err
    local = run.out / "backup" / "local"
    assert sorted(p.name for p in local.iterdir()) == [
        "maps.train.mixed_bfloat16.npy", "maps.val.mixed_bfloat16.npy",
    ]  # fmt: skip
    maps = np.load(local / "maps.val.mixed_bfloat16.npy")
    assert maps.dtype == np.uint16
    assert np.isfinite(maps.view(ml_dtypes.bfloat16).astype(np.float32)).all()


def test_maps_cached_at_another_precision_are_rebuilt_not_used(tmp_path: Path) -> None:
    run = _tiny_run(tmp_path, "bfloat16", env={FAIL_AFTER_ENV: "1"})
    assert run.result.rc == 75, run.result.err
    resumed = workload(*train_argv("--precision", "float32"), cwd=tmp_path)
    assert resumed.rc == 0, resumed.err
    assert "features: block4 maps of" in resumed.out  # computed again, in float32
    assert "features: one pass" not in resumed.out  # the finished features phase is kept
    metrics = json.loads((run.out / "metrics.json").read_text())
    assert metrics["precision"] == "float32"


def test_job_output_has_no_retracing_or_other_tensorflow_warning(
    fast_run: TinyRun, tmp_path: Path
) -> None:
    """A real `kgg train` process (TensorFlow's logger writes to the stderr it
    found at import): the final evaluation used to retrace Keras' predict function on every
    new batch shape and label shape ("5 out of the last 9 calls ... triggered tf.function
    retracing")."""
    job = subprocess.run(
        [sys.executable, "-m", "kgg", *map(str, train_argv(data=fast_run.data))],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert job.returncode == 0, job.stderr[-3000:]
    output = job.stdout + job.stderr
    assert "done: held-out micro-F1" in output
    assert "retracing" not in output
    assert [line for line in output.splitlines() if line.startswith("WARNING:tensorflow")] == []
