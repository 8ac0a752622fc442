"""`kgg sweep --local`: trials one after another under Vertex's trial contract, parameters drawn
from the study, the best from the metric files; once with the real job on tiny data."""

from __future__ import annotations

import json
import math
import random
import subprocess
from pathlib import Path

import pytest

from kgg.cli import local_sweep, main
from kgg.job import trial
from tests.job.conftest import TINY_ARGS, write_tiny_data

STUDY = {
    "parameters": [
        {"parameterId": "finetune-lr", "doubleValueSpec": {"minValue": 1e-5, "maxValue": 1e-2},
         "scaleType": "UNIT_LOG_SCALE"},
        {"parameterId": "unfreeze-blocks", "integerValueSpec": {"minValue": "1", "maxValue": "3"}},
        {"parameterId": "recipe", "categoricalValueSpec": {"values": ["fast", "guide"]}},
        {"parameterId": "head-lr", "discreteValueSpec": {"values": [0.001, 0.01]}},
    ]
}  # fmt: skip


def test_draws_stay_inside_the_study_and_log_scales_spread_in_log() -> None:
    rng = random.Random(3)
    draws = [local_sweep.draw(STUDY, rng) for _ in range(400)]
    assert all(1e-5 <= d["finetune-lr"] <= 1e-2 for d in draws)
    assert {d["unfreeze-blocks"] for d in draws} == {1, 2, 3}
    assert {d["recipe"] for d in draws} == {"fast", "guide"}
    assert {d["head-lr"] for d in draws} == {0.001, 0.01}
    # Uniform in log: about a third of the draws below 1e-4 (a linear draw: about 1%).
    below = sum(d["finetune-lr"] < 1e-4 for d in draws) / len(draws)
    assert 0.25 < below < 0.42
    assert local_sweep.arguments({"unfreeze-blocks": 2, "recipe": "fast"}) == [
        "--unfreeze-blocks=2", "--recipe=fast",
    ]  # fmt: skip


def test_each_trial_gets_vertexs_contract_and_the_best_is_chosen(tmp_path: Path) -> None:
    seen: list[tuple[list[str], dict[str, str]]] = []

    def job(argv: list[str], env: dict[str, str], check: bool) -> subprocess.CompletedProcess:
        """What the job does with the contract (kgg/job/cli.py): its folder, its report."""
        seen.append((argv, env))
        run = trial.from_environment(env)
        assert run is not None and run.out == f"{tmp_path}/{env['CLOUD_ML_TRIAL_ID']}"
        blocks = int(next(a for a in argv if a.startswith("--unfreeze-blocks=")).split("=")[1])
        if env["CLOUD_ML_TRIAL_ID"] == "3":
            return subprocess.CompletedProcess(argv, 1)  # failed: no score
        trial.MetricReporter.from_environment(env).report(blocks / 10)
        return subprocess.CompletedProcess(argv, 0)

    lines: list[str] = []
    trials = local_sweep.run_trials(STUDY, ["train", "--data", "d"], tmp_path, 3, seed=1,
                                    run=job, report=lines.append)  # fmt: skip
    assert [t.trial_id for t in trials] == ["1", "2", "3"]
    assert trials[2].score is None and trials[2].exit_code == 1
    assert seen[0][0][3:6] == ["train", "--data", "d"]
    best = local_sweep.best(trials)
    assert best is not None
    assert best.score == max(t.score for t in trials[:2] if t.score is not None)
    assert math.isclose(best.score, best.parameters["unfreeze-blocks"] / 10)
    assert lines[-1] == "trial 3: no score (exit 1)"


def test_sweep_local_runs_the_real_job_and_names_the_best(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_tiny_data(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    code = main.run(["sweep", "--local", "--trials", "2", "--data", str(data), "--run-id", "vs-l",
                     "--param", "unfreeze-blocks=1..2", "--seed-trials", "1",
                     "--local-out", str(tmp_path / "out"), *TINY_ARGS])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    for n in ("1", "2"):
        assert (tmp_path / "out" / "vs-l" / n / "metrics.json").is_file()
        reports = trial.read_reports(tmp_path / "out" / "vs-l" / ".hypertune" / f"{n}.metrics")
        assert [r["trial"] for r in reports] == [n]
    assert "best: trial " in out and "micro-F1 " in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--data", "d", "--algorithm", "grid"], "sweep --local searches at random"),
        (["--run-id", "Sweep 1"], "--run-id 'Sweep 1' must be lowercase letters"),
    ],
)
def test_sweep_local_refuses_what_it_cannot_do(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main.run(["sweep", "--local", "--trials", "2", "--param", "unfreeze-blocks=1..2",
                     *argv])  # fmt: skip
    assert code == 2 and message in capsys.readouterr().err


def test_sweep_local_without_data_sweeps_the_demo_bucket_and_keeps_three_trials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The rehearsal `kgg demo` is for one run: the demo's data in an emulator bucket held to
    the stack's grants, each trial writing its Vertex layout there as the VM's account; the
    results are copied out before the emulator goes."""
    out = tmp_path / "out"
    code = main.run(["sweep", "--local", "--trials", "3", "--run-id", "vs-demo",
                     "--param", "head-lr=discrete:0.001,0.01", "--seed-trials", "2",
                     "--local-out", str(out), "--image-size", "32", "--head-epochs", "1",
                     "--finetune-epochs", "1", "--guide-epochs", "1", "--no-progress"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "gs://kgg-demo/runs/vs-demo/" in printed
    scores = {}
    for n in ("1", "2", "3"):
        metrics = json.loads((out / "vs-demo" / n / "metrics.json").read_text())
        scores[n] = metrics["micro_f1"]
    best = max(scores, key=lambda n: scores[n])
    assert f"best: trial {best}, micro-F1 {scores[best]:.4f} " in printed
    assert printed.rstrip().endswith(f"in {out / 'vs-demo' / best}")
