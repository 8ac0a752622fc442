"""The GPU mode on a machine without a GPU, and the split the end-to-end estimate uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import common, gpu, hardware


def test_gpu_mode_without_a_gpu_says_skipped_and_succeeds(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
):
    monkeypatch.setattr(hardware, "list_gpus", lambda: [])
    assert gpu.main(common.QUICK, tmp_path) == 0
    assert capsys.readouterr().out.startswith("skipped: no GPU")
    assert not any(tmp_path.iterdir())


def test_full_size_split_is_the_jobs_stratified_80_20_split_of_4750():
    sizes = common.full_sizes()
    assert sizes.train + sizes.val == 4750
    assert sizes.val == pytest.approx(950, abs=6)
    assert sizes.test == 794
