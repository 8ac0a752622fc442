"""cli and config: options resolve to the recipe's defaults, and laptop commands need no TF."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kgg.cli.main import build_parser
from kgg.cli.main import run as main
from kgg.job.cli import EXIT_USAGE, config_from_args
from kgg.job.config import TrainConfig, resolve
from tests.job.conftest import train_argv, workload, write_tiny_data


def _config(*argv: str) -> TrainConfig:
    return config_from_args(
        build_parser().parse_args(["train", "--data", "d", "--out", "o", *argv])
    )


def test_guide_recipe_reproduces_2018_settings() -> None:
    config = _config("--recipe", "guide")
    assert (config.image_size, config.batch_size, config.guide_epochs) == (224, 32, 20)
    assert (config.guide_lr, config.guide_momentum, config.guide_decay) == (1e-3, 0.9, 1e-6)
    assert not config.augment
    assert [phase for phase, _ in config.phases()] == ["guide"]


def test_fast_recipe_is_the_default_with_three_phases() -> None:
    config = _config("--image-size", "64", "--head-epochs", "3", "--weights", "none")
    assert config.recipe == "fast"
    assert config.phases() == [("features", 1), ("head", 3), ("finetune", 10)]
    assert (config.image_size, config.weights) == (64, "none")
    assert config.augment


def test_fingerprint_ignores_where_results_go_but_not_what_is_trained() -> None:
    a = resolve(data="d", out="o1", cache_dir="/x")
    assert a.fingerprint() == resolve(data="d", out="o2", cache_dir="/y").fingerprint()
    assert a.fingerprint() != resolve(data="d", out="o1", seed=1).fingerprint()


@pytest.mark.parametrize(
    ("option", "match"),
    [({"recipe": "slow"}, "recipe 'slow'"), ({"val_split": 1.5}, "--val-split 1.5"),
     ({"base": "resnet"}, "base 'resnet'"), ({"image_size": 8}, "--image-size 8")],
)  # fmt: skip
def test_bad_options_are_rejected_naming_the_value(option: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrainConfig(data="d", out="o", **option)


def test_cli_and_storage_import_without_tensorflow() -> None:
    code = (
        "import sys, kgg.cli.main, kgg.common.storage, kgg.job.train, kgg.cli.demo;"
        "kgg.cli.main.build_parser();"
        "assert not [m for m in sys.modules if m.startswith(('tensorflow', 'keras'))]"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_train_with_an_empty_class_folder_fails_fast_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_tiny_data(tmp_path / "data")
    (tmp_path / "data/train/Cleavers").mkdir()
    argv = ["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
            "--cache-dir", str(tmp_path / "cache"), "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    assert "Cleavers" in capsys.readouterr().err
    progress = json.loads((tmp_path / "out/progress.json").read_text())
    assert progress["state"] == "failed"
    assert "Cleavers" in progress["error"]


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [("--guide-epochs", "-3", "--guide-epochs -3 must be at least 1"),
     ("--head-epochs", "0", "--head-epochs 0 must be at least 1"),
     ("--finetune-epochs", "-1", "--finetune-epochs -1 must be at least 0"),
     ("--patience", "0", "--patience 0 must be at least 1"),
     ("--head-lr", "0", "--head-lr 0.0 must be a learning rate in (0, 1]"),
     ("--guide-lr", "nan", "--guide-lr nan must be a learning rate in (0, 1]"),
     ("--finetune-lr", "-0.5", "--finetune-lr -0.5 must be a learning rate in (0, 1]")],
)  # fmt: skip
def test_out_of_range_epochs_rates_and_patience_are_one_line_errors(
    tiny_data: Path, tmp_path: Path, option: str, value: str, expected: str
) -> None:
    result = workload(*train_argv("--recipe", "guide", option, value), cwd=tmp_path)
    assert result.rc == EXIT_USAGE
    assert result.error_line() == f"error: {expected}"
    assert not (tmp_path / "out").exists()  # nothing started, nothing to clean up


def test_train_without_out_outside_vertex_is_one_line_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AIP_MODEL_DIR", raising=False)
    monkeypatch.delenv("CLOUD_ML_TRIAL_ID", raising=False)
    assert main(["train", "--data", "d"]) == EXIT_USAGE
    assert capsys.readouterr().err == (
        "error: --out is required (Vertex AI jobs get it from AIP_MODEL_DIR)\n"
    )


def test_a_vertex_trial_writes_to_its_folder_and_reports_the_headline_score(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under a tuning job's trial the run's folder comes from AIP_MODEL_DIR and the headline
    micro-F1 reaches the tuner's metric file (kgg/job/trial.py)."""
    from kgg.job import train as train_module
    from kgg.job import trial

    seen: list[TrainConfig] = []

    def fake_train(config: TrainConfig, restart: bool = False) -> dict:
        seen.append(config)
        return {"micro_f1": 0.875, "scored_on": "holdout"}

    monkeypatch.setattr(train_module, "train", fake_train)
    metric_file = tmp_path / "hypertune" / "output.metrics"
    monkeypatch.setenv("AIP_MODEL_DIR", "gs://kgg-test-bucket/runs/vs-1/7/model/")
    monkeypatch.setenv("CLOUD_ML_TRIAL_ID", "7")
    monkeypatch.setenv("CLOUD_ML_HP_METRIC_FILE", str(metric_file))
    assert main(["train", "--data", "d", "--head-lr", "0.01"]) == 0
    assert seen[0].out == "gs://kgg-test-bucket/runs/vs-1/7"
    (report,) = trial.read_reports(metric_file)
    assert (report["trial"], report["micro_f1"]) == ("7", "0.875")
