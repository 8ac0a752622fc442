"""The workload archive is deterministic and carries only what the VM needs."""

from __future__ import annotations

import io
import tarfile

from infra.archive import build_archive


def _tree(root):
    (root / "workload" / "__pycache__").mkdir(parents=True)
    (root / "startup").mkdir()
    (root / "workload" / "train.py").write_text("print('train')\n")
    (root / "workload" / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"\0")
    (root / "startup" / "boot.sh.j2").write_text("#!/usr/bin/env bash\n")
    (root / "pyproject.toml").write_text("[project]\nname='x'\n")
    (root / "uv.lock").write_text("version = 1\n")
    (root / "README.md").write_text("not shipped\n")


def test_same_sources_give_the_same_bytes_and_hash(tmp_path):
    _tree(tmp_path)
    first = build_archive(tmp_path)
    (tmp_path / "workload" / "train.py").touch()  # a new mtime alone changes nothing
    assert build_archive(tmp_path) == first


def test_a_code_change_changes_the_hash(tmp_path):
    _tree(tmp_path)
    before = build_archive(tmp_path).sha256
    (tmp_path / "workload" / "train.py").write_text("print('train faster')\n")
    assert build_archive(tmp_path).sha256 != before


def test_archive_holds_code_and_lock_without_caches(tmp_path):
    _tree(tmp_path)
    archive = build_archive(tmp_path)
    with tarfile.open(fileobj=io.BytesIO(archive.data)) as tar:
        names = tar.getnames()
        assert all(member.mtime == 0 and member.uid == 0 for member in tar.getmembers())
    assert names == ["pyproject.toml", "startup/boot.sh.j2", "uv.lock", "workload/train.py"]
    assert archive.object_name == f"code/workload-{archive.sha256[:16]}.tar.gz"
