"""`kgg tensorboard`: the mirror against the GCS emulator, TensorBoard's server on
it, and the one-line errors; event files written with TensorBoard's own writer (no TensorFlow)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from kgg.common import storage

from .conftest import REPO_ROOT, run_workload

FIXTURES = Path(__file__).parent / "fixtures"


def event_file_bytes(folder: Path, losses: list[float]) -> bytes:
    """A real event file with `epoch_loss` at steps 0.. (TensorBoard's writer, as Keras'
    summaries record scalars), written in `folder`; returns its bytes."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    writer = EventFileWriter(str(folder))
    for step, loss in enumerate(losses):
        value = summary_pb2.Summary.Value(tag="epoch_loss", simple_value=loss)
        writer.add_event(event_pb2.Event(step=step, summary=summary_pb2.Summary(value=[value])))
    writer.close()
    (path,) = folder.glob("events.out.tfevents.*")
    return path.read_bytes()


def put_run(bucket: str, run: str, files: dict[str, bytes]) -> None:
    storage.write_json(f"gs://{bucket}/runs/{run}/progress.json", {"state": "running"})
    for name, data in files.items():
        storage.write_bytes(f"gs://{bucket}/runs/{run}/tensorboard/{name}", data)


def tensorboard(bucket: str, cache: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return run_workload(
        "tensorboard", *argv, "--bucket", bucket, "--cache", str(cache), cwd=cache.parent
    )


def test_mirror_copies_a_runs_event_files_and_then_only_what_changed(
    gcs_bucket: str, tmp_path: Path
) -> None:
    events = event_file_bytes(tmp_path / "w", [2.5, 1.25])
    put_run(gcs_bucket, "r1", {"head/train/events.a": events, "head/validation/events.b": b"v"})
    cache = tmp_path / "cache"
    first = tensorboard(gcs_bucket, cache, "r1", "--no-serve")
    assert first.returncode == 0, first.stderr
    assert "downloaded 2 files" in first.stdout
    logdir = cache / gcs_bucket / "r1"
    assert (logdir / "head/train/events.a").read_bytes() == events
    storage.write_bytes(f"gs://{gcs_bucket}/runs/r1/tensorboard/head/validation/events.b", b"vv")
    second = tensorboard(gcs_bucket, cache, "latest", "--no-serve")
    assert "downloaded 1 files" in second.stdout
    assert "1 already up to date" in second.stdout
    assert (logdir / "head/validation/events.b").read_bytes() == b"vv"


def test_all_mirrors_every_run_with_event_files_side_by_side(
    gcs_bucket: str, tmp_path: Path
) -> None:
    put_run(gcs_bucket, "r1", {"head/train/e1": b"1"})
    put_run(gcs_bucket, "r2", {"guide/train/e2": b"2"})
    put_run(gcs_bucket, "r3", {})  # a run from before TensorBoard: nothing to mirror
    result = tensorboard(gcs_bucket, tmp_path / "cache", "all", "--no-serve")
    assert result.returncode == 0, result.stderr
    root = tmp_path / "cache" / gcs_bucket
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert files == ["r1/head/train/e1", "r2/guide/train/e2"]
    assert result.stdout.startswith(f"r1, r2 -> {root}:")


def test_object_names_leading_outside_the_cache_are_refused(
    gcs_bucket_like_real_gcs: str, tmp_path: Path
) -> None:
    bucket = gcs_bucket_like_real_gcs
    put_run(bucket, "r1", {"head/train/e1": b"1", "../../../../escaped": b"x"})
    result = tensorboard(bucket, tmp_path / "cache", "r1", "--no-serve")
    assert result.returncode == 0, result.stderr
    assert "refused 1 objects" in result.stdout
    assert not list(tmp_path.rglob("escaped"))


def test_the_mirror_stops_before_more_than_its_bound_and_says_so(
    gcs_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A bucket writer's 50 GB of "event files" must not fill the laptop's disk."""
    import argparse

    from kgg.cli import main as cli_main
    from kgg.cli import tensorboard as board

    from .conftest import run_cli

    monkeypatch.setattr(board, "MAX_MIRROR_BYTES", 1000)
    put_run(gcs_bucket, "r1", {"head/train/events.out.tfevents.1": b"\0" * 2000})
    parser = argparse.ArgumentParser(prog="workload")
    cli_main.add_commands(parser.add_subparsers(dest="command", required=True))
    cache = tmp_path / "cache"

    code = run_cli(parser, "tensorboard", "r1", "--no-serve", "--bucket", gcs_bucket,
                   "--cache", str(cache))  # fmt: skip

    assert code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(
        f"error: gs://{gcs_bucket}/runs/r1/tensorboard/ holds 0.0 GB to download, more than the "
        "TensorBoard mirror takes (1e-06 GB)"
    )
    assert not list(cache.rglob("events.out.tfevents.*"))


def test_run_without_event_files_is_a_one_line_error(gcs_bucket: str, tmp_path: Path) -> None:
    put_run(gcs_bucket, "r1", {})
    result = tensorboard(gcs_bucket, tmp_path / "cache", "r1", "--no-serve")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: run 'r1' has no TensorBoard files in gs://{gcs_bucket}/runs/r1/tensorboard/ "
        "yet (they appear after its first training epoch)"
    )


def test_missing_tensorboard_package_is_one_line_naming_the_install_command(
    gcs_bucket: str, tmp_path: Path
) -> None:
    put_run(gcs_bucket, "r1", {"head/train/e1": b"1"})
    env = {**os.environ, "PYTHONPATH": f"{FIXTURES / 'no_tensorboard'}{os.pathsep}{REPO_ROOT}"}
    result = subprocess.run(
        [sys.executable, "-m", "kgg", "tensorboard", "r1", "--bucket", gcs_bucket,
         "--cache", str(tmp_path / "cache")],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: TensorBoard is not installed")
    assert "`uv sync --group tensorboard`" in lines[0]
    assert not (tmp_path / "cache").exists()  # checked before downloading anything


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get_json(url: str) -> object | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())
    except OSError:
        return None


def test_tensorboard_serves_the_mirrored_scalars_on_localhost(
    gcs_bucket: str, tmp_path: Path
) -> None:
    events = event_file_bytes(tmp_path / "w", [2.5, 1.25])
    put_run(gcs_bucket, "r1", {"head/train/events.out.tfevents.1.vm.1.0.v2": events})
    port = _free_port()
    command = [sys.executable, "-m", "kgg", "tensorboard", "r1", "--bucket", gcs_bucket,
               "--cache", str(tmp_path / "cache"), "--port", str(port),
               "--refresh", "1"]  # fmt: skip
    # faulthandler: SIGABRT makes a command that does not stop print where each thread waits.
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONFAULTHANDLER": "1"}
    server = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/data/plugin/scalars/scalars?run=head/train&tag=epoch_loss"
    try:
        deadline = time.monotonic() + 120
        scalars = None
        while time.monotonic() < deadline and server.poll() is None:
            scalars = _get_json(url)
            if scalars:
                break
            time.sleep(1)
        assert scalars, f"no scalars from TensorBoard at {url}"
        assert isinstance(scalars, list)  # TensorBoard's [[wall_time, step, value], ...]
        assert [(step, value) for _, step, value in scalars] == [(0, 2.5), (1, 1.25)]
        server.send_signal(signal.SIGINT)  # Ctrl-C: the command stops TensorBoard with it
        try:
            output, _ = server.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            server.send_signal(signal.SIGABRT)
            pytest.fail(f"Ctrl-C did not stop the command:\n{server.communicate(timeout=30)[0]}")
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    assert server.returncode == 130, output
    assert "stopping TensorBoard" in output
    assert _get_json(url) is None  # the server is gone with the command
