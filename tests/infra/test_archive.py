"""The workload archive is deterministic and carries only what the VM needs."""

from __future__ import annotations

import gzip
import io
import subprocess
import tarfile

import pytest

from kgg.infra.archive import ArchiveError, build_archive


def _tree(root):
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    (root / "kgg" / "job" / "__pycache__").mkdir(parents=True)
    (root / "kgg" / "startup").mkdir()
    (root / "kgg" / "infra").mkdir()
    (root / "kgg" / "job" / "train.py").write_text("print('train')\n")
    (root / "kgg" / "job" / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"\0")
    (root / "kgg" / "startup" / "boot.sh.j2").write_text("#!/usr/bin/env bash\n")
    (root / "kgg" / "infra" / "component.py").write_text("# pulumi up only: not shipped\n")
    (root / "pyproject.toml").write_text("[project]\nname='x'\n")
    (root / "uv.lock").write_text("version = 1\n")
    (root / "README.md").write_text("not shipped\n")


def test_same_sources_give_the_same_bytes_and_hash(tmp_path):
    _tree(tmp_path)
    first = build_archive(tmp_path)
    (tmp_path / "kgg" / "job" / "train.py").touch()  # a new mtime alone changes nothing
    assert build_archive(tmp_path) == first


def test_a_code_change_changes_the_hash(tmp_path):
    _tree(tmp_path)
    before = build_archive(tmp_path).sha256
    (tmp_path / "kgg" / "job" / "train.py").write_text("print('train faster')\n")
    assert build_archive(tmp_path).sha256 != before


def test_archive_holds_code_and_lock_without_caches(tmp_path):
    _tree(tmp_path)
    archive = build_archive(tmp_path)
    with tarfile.open(fileobj=io.BytesIO(archive.data)) as tar:
        names = tar.getnames()
        assert all(member.mtime == 0 and member.uid == 0 for member in tar.getmembers())
    assert names == ["kgg/job/train.py", "kgg/startup/boot.sh.j2", "pyproject.toml", "uv.lock"]
    assert archive.object_name == f"code/workload-{archive.sha256[:16]}.tar.gz"


def test_archive_leaves_out_git_ignored_files(tmp_path):
    _tree(tmp_path)
    (tmp_path / ".gitignore").write_text(".env\n*.key\n")
    (tmp_path / "kgg" / "job" / ".env").write_text("WANDB_API_KEY=canary-5e3f\n")
    (tmp_path / "kgg" / "startup" / "sa.key").write_text("canary-5e3f\n")
    archive = build_archive(tmp_path)
    assert "kgg/job/.env" not in archive.files and "kgg/startup/sa.key" not in archive.files
    assert b"canary-5e3f" not in gzip.decompress(archive.data)
    assert "kgg/job/train.py" in archive.files  # new, not yet committed: shipped


def test_archive_outside_a_git_checkout_says_to_use_one(tmp_path, monkeypatch):
    # Even where the temporary folder sits inside some other checkout.
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    (tmp_path / "kgg" / "job").mkdir(parents=True)
    (tmp_path / "kgg" / "job" / "train.py").write_text("print('train')\n")
    with pytest.raises(ArchiveError, match=r"git ls-files.*run pulumi from a git clone"):
        build_archive(tmp_path)


def test_archive_refuses_a_link_naming_it_and_never_reads_its_target(tmp_path):
    """`kgg/job/notes.txt -> ~/.ssh/id_ed25519` must not ship the key to the bucket."""
    _tree(tmp_path / "repo")
    repo = tmp_path / "repo"
    key = tmp_path / "id_ed25519"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY----- canary-9d1c\n")
    (repo / "kgg" / "job" / "notes.txt").symlink_to(key)
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "token.txt").write_text("canary-9d1c\n")
    (repo / "kgg" / "startup" / "linked").symlink_to(tmp_path / "secrets", target_is_directory=True)

    with pytest.raises(ArchiveError) as refused:
        build_archive(repo)

    message = str(refused.value)
    assert "symbolic links: kgg/job/notes.txt, kgg/startup/linked;" in message
    assert "canary" not in message


def test_archive_refuses_a_tracked_link_and_a_committed_link_git_checked_out_as_a_file(tmp_path):
    _tree(tmp_path)
    (tmp_path / "kgg" / "job" / "data").symlink_to("/etc/hostname")
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "link"], check=True)
    (tmp_path / "kgg" / "job" / "data").unlink()  # core.symlinks=false: the link as a plain file
    (tmp_path / "kgg" / "job" / "data").write_text("/etc/hostname")

    with pytest.raises(ArchiveError, match="symbolic links: kgg/job/data;"):
        build_archive(tmp_path)
