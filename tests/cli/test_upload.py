"""upload: layout checks, resumable MD5-skipping upload and the manifest written last (emulator)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest

from kgg.cli import upload
from kgg.common import storage

from .conftest import CLASSES, TEST_IMAGES, make_dataset, run_cli, run_workload

PREFIX = "data/plant-seedlings"


def _bucket_objects(bucket: str) -> dict[str, storage.ObjectInfo]:
    return {info.name: info for info in storage.list_objects(f"gs://{bucket}/{PREFIX}")}


def test_scan_lists_classes_and_test_images(dataset_dir: Path) -> None:
    dataset = upload.scan_dataset(dataset_dir)
    assert dataset.class_counts == CLASSES
    assert len(dataset.test) == TEST_IMAGES
    assert dataset.files[0].relpath == "train/Black-grass/0.png"


def test_scan_accepts_capitalised_train_folder_and_names_objects_lower_case(
    tmp_path: Path,
) -> None:
    dataset = upload.scan_dataset(make_dataset(tmp_path / "d", train_name="Train"))
    assert all(f.relpath.startswith(("train/", "test/")) for f in dataset.files)
    assert dataset.class_counts == CLASSES


def test_scan_ignores_non_images_but_counts_them(dataset_dir: Path) -> None:
    (dataset_dir / "train" / "Maize" / ".DS_Store").write_bytes(b"x")
    (dataset_dir / "test" / "notes.txt").write_text("x")
    dataset = upload.scan_dataset(dataset_dir)
    assert dataset.class_counts == CLASSES
    assert len(dataset.ignored) == 2


def test_scan_rejects_folder_without_train_naming_it(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(upload.LayoutError, match=r"has no train/ folder.*train/<class>/\*\.png"):
        upload.scan_dataset(tmp_path)


def test_scan_rejects_the_train_folder_itself_suggesting_its_parent(dataset_dir: Path) -> None:
    with pytest.raises(upload.LayoutError, match="pass its parent folder"):
        upload.scan_dataset(dataset_dir / "train")


def test_scan_rejects_images_directly_in_train(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "a.png").write_bytes(b"x")
    with pytest.raises(upload.LayoutError, match=r"holds images directly \(a\.png\)"):
        upload.scan_dataset(tmp_path)


def test_scan_rejects_an_empty_class_folder_naming_it(dataset_dir: Path) -> None:
    (dataset_dir / "train" / "Sugar beet").mkdir()
    with pytest.raises(upload.LayoutError, match="Sugar beet has no images"):
        upload.scan_dataset(dataset_dir)


def test_scan_rejects_a_single_class(tmp_path: Path) -> None:
    (tmp_path / "train" / "Maize").mkdir(parents=True)
    (tmp_path / "train" / "Maize" / "a.png").write_bytes(b"x")
    with pytest.raises(upload.LayoutError, match="at least 2"):
        upload.scan_dataset(tmp_path)


def test_scan_rejects_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(upload.LayoutError, match="is not a folder"):
        upload.scan_dataset(tmp_path / "nope")


def test_upload_copies_every_image_and_a_manifest_matching_the_bucket(
    gcs_bucket: str, dataset_dir: Path
) -> None:
    report = upload.upload_dataset(dataset_dir, gcs_bucket, PREFIX, workers=4, progress=False)
    total = sum(CLASSES.values()) + TEST_IMAGES
    assert (report.uploaded, report.skipped, report.manifest_written) == (total, 0, True)
    objects = _bucket_objects(gcs_bucket)
    manifest = storage.read_json(f"gs://{gcs_bucket}/{PREFIX}/{upload.MANIFEST_NAME}")
    assert manifest is not None
    assert manifest["version"] == 1
    assert manifest["classes"] == CLASSES
    assert manifest["test"] == TEST_IMAGES
    assert manifest["created"].endswith("Z")
    assert set(manifest["files"]) == set(objects) - {upload.MANIFEST_NAME}
    for name, entry in manifest["files"].items():
        assert entry == {"size": objects[name].size, "md5": objects[name].md5}


def test_upload_again_skips_every_file_and_leaves_the_manifest(
    gcs_bucket: str, dataset_dir: Path
) -> None:
    upload.upload_dataset(dataset_dir, gcs_bucket, PREFIX, progress=False)
    manifest_url = f"gs://{gcs_bucket}/{PREFIX}/{upload.MANIFEST_NAME}"
    first = storage.read_json(manifest_url)
    again = upload.upload_dataset(dataset_dir, gcs_bucket, PREFIX, progress=False)
    assert (again.uploaded, again.skipped) == (0, sum(CLASSES.values()) + TEST_IMAGES)
    assert again.manifest_written is False
    assert storage.read_json(manifest_url) == first


def test_changed_file_is_uploaded_again(gcs_bucket: str, dataset_dir: Path) -> None:
    upload.upload_dataset(dataset_dir, gcs_bucket, PREFIX, progress=False)
    changed = dataset_dir / "train" / "Maize" / "0.png"
    changed.write_bytes(b"a different image")
    report = upload.upload_dataset(dataset_dir, gcs_bucket, PREFIX, progress=False)
    assert report.uploaded == 1
    assert _bucket_objects(gcs_bucket)["train/Maize/0.png"].md5 == storage.local_md5(changed)


def test_interrupted_upload_resumes_and_writes_the_manifest_last(
    gcs_bucket: str, dataset_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first attempt got only Black-grass across before the laptop went to sleep.
    first_class = dataset_dir / "train" / "Black-grass"
    for path in first_class.iterdir():
        storage.upload_file(path, f"gs://{gcs_bucket}/{PREFIX}/train/Black-grass/{path.name}")
    writes: list[str] = []
    real_upload, real_write = storage.upload_files, storage.write_json

    def recorded(files: list[tuple[Path, str]], base: str, workers: int, progress: bool) -> None:
        real_upload(files, base, workers, progress)
        writes.extend(f"{base}/{name}" for _, name in files)

    def recorded_write(url: str, obj: object) -> None:
        writes.append(url)
        real_write(url, obj)

    monkeypatch.setattr(storage, "upload_files", recorded)
    monkeypatch.setattr(storage, "write_json", recorded_write)
    report = upload.upload_dataset(dataset_dir, gcs_bucket, PREFIX, workers=4, progress=False)
    assert report.skipped == CLASSES["Black-grass"]
    assert report.uploaded == sum(CLASSES.values()) + TEST_IMAGES - CLASSES["Black-grass"]
    assert len(writes) == report.uploaded + 1
    assert writes[-1].endswith(f"/{PREFIX}/{upload.MANIFEST_NAME}")


def test_interrupted_upload_of_changed_data_leaves_no_stale_manifest(
    gcs_bucket: str, dataset_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload.upload_dataset(dataset_dir, gcs_bucket, PREFIX, progress=False)
    (dataset_dir / "train" / "Maize" / "new.png").write_bytes(b"new image")

    def network_gone(files: list[tuple[Path, str]], base: str, *args: object) -> None:
        raise storage.StorageError(f"{base}/{files[0][1]}: connection reset")

    monkeypatch.setattr(storage, "upload_files", network_gone)
    with pytest.raises(storage.StorageError):
        upload.upload_dataset(dataset_dir, gcs_bucket, PREFIX, progress=False)
    assert upload.MANIFEST_NAME not in _bucket_objects(gcs_bucket)


def test_upload_command_prints_classes_and_counts(
    gcs_bucket: str,
    dataset_dir: Path,
    parser: argparse.ArgumentParser,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = run_cli(parser, "upload", str(dataset_dir), "--bucket", gcs_bucket, "--quiet")
    out = capsys.readouterr().out
    assert code == 0
    assert f"gs://{gcs_bucket}/{PREFIX}/train: 3 classes, 9 images" in out
    assert "Maize" in out and "     4" in out
    assert f"gs://{gcs_bucket}/{PREFIX}/test: 2 images" in out
    assert "uploaded 11 files" in out


def test_upload_command_to_another_prefix(
    gcs_bucket: str, dataset_dir: Path, parser: argparse.ArgumentParser
) -> None:
    shutil.rmtree(dataset_dir / "test")
    assert (
        run_cli(
            parser,
            "upload",
            str(dataset_dir),
            "--bucket",
            gcs_bucket,
            "--prefix",
            "other/",
            "--quiet",
        )
        == 0
    )
    names = {i.name for i in storage.list_objects(f"gs://{gcs_bucket}/other")}
    assert "_upload_manifest.json" in names and "train/Maize/3.png" in names


def test_upload_command_reports_a_bad_layout_in_one_line(
    gcs_bucket: str,
    tmp_path: Path,
    parser: argparse.ArgumentParser,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = run_cli(parser, "upload", str(tmp_path), "--bucket", gcs_bucket)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"error: {tmp_path} has no train/ folder")
    assert storage.list_objects(f"gs://{gcs_bucket}") == []


def test_all_files_there_but_no_manifest_writes_only_the_manifest(
    gcs_bucket: str, dataset_dir: Path
) -> None:
    # Interrupted between the last file and the manifest.
    upload.upload_dataset(dataset_dir, gcs_bucket, PREFIX, progress=False)
    upload._delete_object(f"gs://{gcs_bucket}/{PREFIX}/{upload.MANIFEST_NAME}")
    report = upload.upload_dataset(dataset_dir, gcs_bucket, PREFIX, progress=False)
    assert (report.uploaded, report.manifest_written) == (0, True)
    assert upload.MANIFEST_NAME in _bucket_objects(gcs_bucket)


def test_objects_not_in_the_local_folder_are_reported_not_deleted(
    gcs_bucket: str, dataset_dir: Path
) -> None:
    storage.write_bytes(f"gs://{gcs_bucket}/{PREFIX}/train/Old name/1.png", b"stale")
    report = upload.upload_dataset(dataset_dir, gcs_bucket, PREFIX, progress=False)
    assert report.extra == ["train/Old name/1.png"]
    assert "WARNING: 1 objects" in upload.format_report(report)
    assert "--delete-extra" in upload.format_report(report)
    assert "train/Old name/1.png" in _bucket_objects(gcs_bucket)


def test_delete_extra_removes_stale_objects_and_rewrites_the_manifest(
    gcs_bucket: str, dataset_dir: Path
) -> None:
    upload.upload_dataset(dataset_dir, gcs_bucket, PREFIX, progress=False)
    storage.write_bytes(f"gs://{gcs_bucket}/{PREFIX}/train/Old name/1.png", b"stale")
    report = upload.upload_dataset(
        dataset_dir, gcs_bucket, PREFIX, progress=False, delete_extra=True
    )
    assert (report.deleted, report.manifest_written) == (1, True)
    names = set(_bucket_objects(gcs_bucket))
    assert "train/Old name/1.png" not in names
    assert upload.MANIFEST_NAME in names


def test_scan_of_the_folder_above_the_dataset_points_at_it(dataset_dir: Path) -> None:
    with pytest.raises(upload.LayoutError, match=f"but {dataset_dir} has: pass that folder"):
        upload.scan_dataset(dataset_dir.parent)


def _object_contents(bucket: str) -> list[bytes]:
    contents = []
    for name in _bucket_objects(bucket):
        content = storage.read_bytes(f"gs://{bucket}/{PREFIX}/{name}")
        assert content is not None, f"{name} was listed but cannot be read"
        contents.append(content)
    return contents


def test_upload_never_follows_links_out_of_the_dataset(
    gcs_bucket: str, dataset_dir: Path, tmp_path: Path
) -> None:
    # A downloaded dataset archive that points at the laptop's own files.
    secrets = tmp_path / "home" / ".ssh"
    secrets.mkdir(parents=True)
    (secrets / "id_rsa").write_bytes(b"PRIVATE KEY")
    (secrets / "stolen.png").write_bytes(b"PRIVATE PNG")
    (dataset_dir / "train" / "Maize" / "leaf.png").symlink_to(secrets / "id_rsa")
    (dataset_dir / "train" / "Ssh").symlink_to(secrets, target_is_directory=True)
    (dataset_dir / "test" / "t9.png").symlink_to(secrets / "stolen.png")
    (dataset_dir / "test" / "t0-again.png").symlink_to(dataset_dir / "test" / "t0.png")
    result = run_workload("upload", str(dataset_dir), "--bucket", gcs_bucket, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    contents = _object_contents(gcs_bucket)
    assert not any(b"PRIVATE" in content for content in contents)
    assert "3 classes, 9 images" in result.stdout
    assert "skipped 3 symbolic links that lead outside the dataset folder" in result.stdout
    assert "test/t0-again.png" in _bucket_objects(gcs_bucket)  # a link within the dataset is fine


def test_upload_refuses_a_train_folder_that_links_out_of_the_dataset(
    gcs_bucket: str, dataset_dir: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    (dataset_dir / "train").rename(elsewhere)
    (dataset_dir / "train").symlink_to(elsewhere, target_is_directory=True)
    result = run_workload("upload", str(dataset_dir), "--bucket", gcs_bucket, cwd=tmp_path)
    assert result.returncode == 2
    assert f"is a symbolic link to {elsewhere}, outside {dataset_dir}" in result.stderr
    assert _bucket_objects(gcs_bucket) == {}
