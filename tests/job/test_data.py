"""data: discovery, robust decoding, the image cache, the gs:// mirror, split and class weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kgg.common import storage
from kgg.job import arrays, folders, pipeline
from kgg.job import images as images_lib
from kgg.job import splits as splits_lib
from tests.job.conftest import png_bytes, write_tiny_data


def _all(images: arrays.DiskRows) -> np.ndarray:
    return arrays.rows_of(images, 0, len(images))


def _write(path: Path, payload: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    return path


@pytest.mark.parametrize(
    ("name", "array", "fmt"),
    [
        ("rgba.png", np.full((20, 30, 4), 200, np.uint8), "PNG"),
        ("gray.png", np.full((20, 20), 90, np.uint8), "PNG"),
        ("deep.png", np.full((20, 20), 65535, np.uint16), "PNG"),
        ("photo.JPG", np.full((50, 40, 3), 120, np.uint8), "JPEG"),
        ("dot.png", np.full((1, 1, 3), 10, np.uint8), "PNG"),
        ("huge.png", np.zeros((3000, 4000, 3), np.uint8), "PNG"),
    ],
)
def test_decode_gives_rgb_uint8_of_the_asked_size(
    tmp_path: Path, name: str, array: np.ndarray, fmt: str
) -> None:
    path = _write(tmp_path / name, png_bytes(array, fmt))
    decoded = images_lib.decode_image(path, 32)
    assert decoded.shape == (32, 32, 3)
    assert decoded.dtype == np.uint8


def test_sixteen_bit_white_stays_white(tmp_path: Path) -> None:
    path = _write(tmp_path / "deep.png", png_bytes(np.full((8, 8), 65535, np.uint16)))
    assert images_lib.decode_image(path, 32).min() == 255


def test_corrupt_and_non_image_files_are_skipped_and_listed(tmp_path: Path) -> None:
    root = write_tiny_data(tmp_path / "data")
    _write(root / "train/Maize/notes.txt", b"not an image")
    _write(root / "train/Maize/cut.png", png_bytes(np.zeros((30, 30, 3), np.uint8))[:60])
    dataset, classes = images_lib.load_train(root, 32, tmp_path / "cache", progress=False)
    assert len(dataset.files) == 18
    assert sorted(s["file"] for s in dataset.skipped) == [
        "train/Maize/cut.png",
        "train/Maize/notes.txt",
    ]
    assert classes == ["Charlock", "Maize", "Sugar beet"]


def test_train_and_test_folders_match_case_insensitively(tmp_path: Path) -> None:
    root = write_tiny_data(tmp_path / "data")
    (root / "train").rename(root / "Train")
    (root / "test").rename(root / "Test")
    train, test = folders.find_split_dirs(root)
    assert (train.name, test.name if test else None) == ("Train", "Test")


def test_empty_class_folder_is_an_error_naming_it(tmp_path: Path) -> None:
    root = write_tiny_data(tmp_path / "data")
    (root / "train/Empty").mkdir()
    with pytest.raises(folders.DataError, match="Empty"):
        images_lib.load_train(root, 32, tmp_path / "cache", progress=False)


def test_a_single_class_is_an_error(tmp_path: Path) -> None:
    root = write_tiny_data(tmp_path / "data", classes=("Maize",))
    with pytest.raises(folders.DataError, match="need at least 2"):
        images_lib.load_train(root, 32, tmp_path / "cache", progress=False)


def test_no_readable_image_is_an_error_naming_the_folder(tmp_path: Path) -> None:
    _write(tmp_path / "data/train/a/x.png", b"junk")
    _write(tmp_path / "data/train/b/y.png", b"junk")
    with pytest.raises(folders.DataError, match="train"):
        images_lib.load_train(tmp_path / "data", 32, tmp_path / "cache", progress=False)


def test_missing_train_folder_is_an_error_naming_the_root(tmp_path: Path) -> None:
    (tmp_path / "data/pictures").mkdir(parents=True)
    with pytest.raises(folders.DataError, match=str(tmp_path / "data")):
        folders.find_split_dirs(tmp_path / "data")


def test_decoded_images_are_cached_and_never_decoded_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_tiny_data(tmp_path / "data")
    first, _ = images_lib.load_train(root, 32, tmp_path / "cache", progress=False)

    def no_decoding(*args: object) -> None:
        raise AssertionError("decoded again")

    monkeypatch.setattr(images_lib, "decode_image", no_decoding)
    second, _ = images_lib.load_train(root, 32, tmp_path / "cache", progress=False)
    np.testing.assert_array_equal(_all(first.images), _all(second.images))


def test_stratified_split_keeps_class_proportions_and_is_reproducible() -> None:
    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
    train, val = splits_lib.stratified_split(labels, 0.2, seed=7)
    assert np.bincount(labels[val]).tolist() == [10, 6, 4]
    assert sorted([*train, *val]) == list(range(100))
    again_train, again_val = splits_lib.stratified_split(labels, 0.2, seed=7)
    np.testing.assert_array_equal(val, again_val)
    np.testing.assert_array_equal(train, again_train)


def test_stratified_split_keeps_one_of_each_class_on_both_sides() -> None:
    train, val = splits_lib.stratified_split(np.array([0, 0, 1, 1, 1, 1]), 0.1, seed=0)
    assert len(val) == 2
    assert len(train) == 4


def test_class_weights_balance_the_classes() -> None:
    labels = np.array([0] * 600 + [1] * 200)
    weights = splits_lib.class_weights(labels, 3)
    np.testing.assert_allclose(weights, [800 / (2 * 600), 800 / (2 * 200), 0.0])
    # each present class contributes the same total weight
    assert weights[0] * 600 == pytest.approx(weights[1] * 200)


def test_gs_data_is_mirrored_without_manifest_and_unchanged_files_are_not_copied(
    gcs_bucket: str, tmp_path: Path
) -> None:
    root = write_tiny_data(tmp_path / "data")
    url = f"gs://{gcs_bucket}/data"
    storage.upload_tree(root, url)
    storage.write_json(f"{url}/_upload_manifest.json", {"version": 1})
    local = folders.fetch_data(url, tmp_path / "cache", progress=False)
    assert not (local / "_upload_manifest.json").exists()
    assert len(list(local.rglob("*.png"))) == 22
    storage.write_bytes(f"{url}/train/Maize/0.png", (root / "train/Maize/1.png").read_bytes())
    stats = storage.download_tree(
        url, local, progress=False, include=lambda n: not n.startswith("_")
    )
    assert (stats.copied, stats.skipped) == (1, 21)


def test_the_data_is_listed_once_for_its_identity_and_its_mirror(
    gcs_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"gs://{gcs_bucket}/data"
    storage.upload_tree(write_tiny_data(tmp_path / "data"), url)
    listed: list[str] = []
    real = storage.list_objects

    def recorded(u: str) -> list[storage.ObjectInfo]:
        listed.append(str(u))
        return real(u)

    monkeypatch.setattr(storage, "list_objects", recorded)
    listing = folders.list_data(url)
    identity = folders.data_identity(url, listing)
    local = folders.fetch_data(url, tmp_path / "cache", progress=False, listing=listing)
    assert [u for u in listed if storage.is_gcs(u)] == [url]
    assert (identity.files, len(list(local.rglob("*.png")))) == (22, 22)
    printed = capsys.readouterr().out
    assert "data: 22 files copied" in printed and "files/s" in printed


def test_a_mirror_that_does_not_fit_is_refused_before_anything_is_copied(
    gcs_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kgg.job import diskspace

    url = f"gs://{gcs_bucket}/data"
    storage.upload_tree(write_tiny_data(tmp_path / "data"), url)
    monkeypatch.setattr(diskspace, "room", lambda folder: (10_000, 0))
    with pytest.raises(diskspace.DiskSpaceError, match=r"the data's mirror .* need .* under"):
        folders.fetch_data(url, tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").rglob("*.png"))


def test_make_dataset_gathers_rows_with_their_labels_and_weights_in_order() -> None:
    images = np.arange(5, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    labels = np.array([0, 1, 2, 0, 1])
    batches = list(pipeline.make_dataset(images, labels, 3, 2, sample_weights=np.arange(5.0) / 10))
    rows = np.concatenate([x.numpy()[:, 0, 0, 0] for x, _, _ in batches])
    assert rows.tolist() == [0, 1, 2, 3, 4]
    assert np.concatenate([y.numpy() for _, y, _ in batches]).argmax(1).tolist() == [0, 1, 2, 0, 1]
    weights = np.concatenate([w.numpy() for _, _, w in batches])
    assert weights == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])


def test_each_epoch_draws_every_sample_once_from_one_of_its_cached_views() -> None:
    n, views = 8, 2
    # Row v * n + i is view v of sample i; its value says which: 100 * v + i.
    values = np.concatenate([np.arange(n) + 100 * v for v in range(views)]).astype(np.float16)
    labels = np.arange(n) % 3
    ds, steps = pipeline.training_dataset(
        values[:, None], labels, 3, 3, None, (1,), range(4), views
    )
    drawn = np.concatenate([x.numpy()[:, 0] for x, y in ds]).astype(int)
    assert steps == 3
    epochs = drawn.reshape(4, n)
    assert all(sorted(epoch % 100) == list(range(n)) for epoch in epochs)
    assert set((drawn // 100).tolist()) == {0, 1}


def test_view_rows_keep_the_label_of_their_sample() -> None:
    n = 6
    values = np.concatenate([np.arange(n), np.arange(n) + 100]).astype(np.float32)
    labels = np.array([0, 1, 2, 0, 1, 2])
    ds, _ = pipeline.training_dataset(values[:, None], labels, 3, 4, None, (3,), range(2), views=2)
    for x, y in ds:
        samples = x.numpy()[:, 0].astype(int) % 100
        assert y.numpy().argmax(1).tolist() == labels[samples].tolist()


def test_an_epochs_batches_depend_on_the_seed_and_epoch_alone() -> None:
    """A run resumed at epoch 2 sees the batches the uninterrupted run saw at epoch 2."""
    images = np.arange(10, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
    labels = np.arange(10) % 2

    def epochs(first: int) -> list[np.ndarray]:
        ds, steps = pipeline.training_dataset(
            images, labels, 2, 4, None, (7, 1), range(first, 3), augment=True
        )
        batches = [x.numpy() for x, _ in ds]
        return [np.concatenate(batches[i : i + steps]) for i in range(0, len(batches), steps)]

    uninterrupted, resumed = epochs(0), epochs(2)
    np.testing.assert_array_equal(resumed[0], uninterrupted[2])
    assert not np.array_equal(uninterrupted[1], uninterrupted[2])


def test_gs_data_identity_follows_the_objects_contents_not_their_names(
    gcs_bucket: str, tmp_path: Path
) -> None:
    url = f"gs://{gcs_bucket}/data"
    storage.upload_tree(write_tiny_data(tmp_path / "data"), url)
    before = folders.data_identity(url)
    maize, charlock = (storage.read_bytes(f"{url}/train/{c}/0.png") for c in ("Maize", "Charlock"))
    storage.write_bytes(f"{url}/train/Maize/0.png", charlock or b"")
    storage.write_bytes(f"{url}/train/Charlock/0.png", maize or b"")
    swapped = folders.data_identity(url)
    assert (swapped.files, swapped.bytes) == (before.files, before.bytes)
    assert swapped.digest != before.digest
    storage.write_bytes(f"{url}/train/Maize/0.png", maize or b"")
    storage.write_bytes(f"{url}/train/Charlock/0.png", charlock or b"")
    assert folders.data_identity(url) == before


def test_object_without_md5_is_identified_by_the_upload_manifests_md5() -> None:
    """Composite objects (parallel uploads) have no MD5 in the listing; the manifest has one."""
    info = storage.ObjectInfo("train/a/0.png", 10, None, None)
    manifest = {"train/a/0.png": {"size": 10, "md5": "abc=="}}
    assert folders._object_checksum(info, manifest) == "abc=="
    assert folders._object_checksum(info, {"train/a/0.png": {"size": 11, "md5": "abc=="}}) == ""


def test_mirror_drops_files_deleted_from_the_bucket(gcs_bucket: str, tmp_path: Path) -> None:
    url = f"gs://{gcs_bucket}/data"
    storage.upload_tree(write_tiny_data(tmp_path / "data"), url)
    local = folders.fetch_data(url, tmp_path / "cache", progress=False)
    assert (local / "train/Maize/0.png").is_file()
    storage.delete_file(f"{url}/train/Maize/0.png")
    folders.fetch_data(url, tmp_path / "cache", progress=False)
    assert not (local / "train/Maize/0.png").exists()
    assert len(list(local.rglob("*.png"))) == 21


def test_decode_processes_write_every_file_into_its_own_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool of processes (the job's path for more than a few files) against the threads."""
    root = write_tiny_data(tmp_path / "data")
    _write(root / "train/Maize/cut.png", png_bytes(np.zeros((30, 30, 3), np.uint8))[:60])
    train = root / "train"
    files = folders.discover_train(train)[0]
    threads = images_lib.load_images(
        train, files, 32, tmp_path / "threads", workers=2, progress=False
    )
    monkeypatch.setattr(images_lib, "PROCESS_POOL_MIN_FILES", 0)
    monkeypatch.setattr(images_lib, "DECODE_CHUNK", 3)  # several chunks per process, out of order
    processes = images_lib.load_images(train, files, 32, tmp_path / "processes", workers=2,
                                 progress=False)  # fmt: skip
    assert processes[1:] == threads[1:]
    ok, skipped = processes[1], processes[2]
    assert [s["file"] for s in skipped] == ["train/Maize/cut.png"]
    assert len(ok) == len(files) - 1
    expected = np.stack([images_lib.decode_image(train / files[i], 32) for i in ok])
    np.testing.assert_array_equal(_all(processes[0]), expected)
    np.testing.assert_array_equal(_all(threads[0]), expected)


def _cache_files(cache: Path) -> list[str]:
    return sorted(p.suffix for p in (cache / "images").iterdir())


def test_a_cache_of_the_in_memory_version_is_rebuilt_never_misread_and_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Version 2 kept the readable images only, loaded whole: its rows are not one per file."""
    root = write_tiny_data(tmp_path / "data")
    _write(root / "train/Charlock/bad.png", b"not a png")
    train = root / "train"
    files = folders.discover_train(train)[0]
    images = tmp_path / "cache" / "images"
    images.mkdir(parents=True)
    monkeypatch.setattr(images_lib, "CACHE_VERSION", 2)
    old_key = images_lib._cache_key(train, files, 32)
    np.save(images / f"{old_key}.npy", np.zeros((len(files) - 1, 32, 32, 3), np.uint8))
    old_meta = {"files": len(files), "ok": list(range(1, len(files))), "skipped": []}
    (images / f"{old_key}.json").write_text(json.dumps(old_meta))
    monkeypatch.setattr(images_lib, "CACHE_VERSION", 3)
    # The same files under the current key too, as if written without a version: not read.
    key = images_lib._cache_key(train, files, 32)
    (images / f"{key}.npy").write_bytes((images / f"{old_key}.npy").read_bytes())
    (images / f"{key}.json").write_text(json.dumps(old_meta))
    pixels, ok, skipped = images_lib.load_images(
        train, files, 32, tmp_path / "cache", progress=False
    )
    assert [s["file"] for s in skipped] == ["train/Charlock/bad.png"]
    expected = np.stack([images_lib.decode_image(train / files[i], 32) for i in ok])
    np.testing.assert_array_equal(_all(pixels), expected)
    assert sorted(p.stem for p in images.iterdir()) == [key, key]  # the old version's are gone
    assert json.loads((images / f"{key}.json").read_text())["version"] == 3


def test_a_cache_cut_short_is_named_deleted_and_decoded_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_tiny_data(tmp_path / "data")
    images_lib.load_train(root, 32, tmp_path / "cache", progress=False)
    array = next((tmp_path / "cache/images").glob("*.npy"))
    array.write_bytes(array.read_bytes()[:-100])  # a disk that filled up under another tool
    dataset, _ = images_lib.load_train(root, 32, tmp_path / "cache", progress=False)
    assert "is unreadable" in capsys.readouterr().err
    expected = np.stack([images_lib.decode_image(root / "train" / f, 32) for f in dataset.files])
    np.testing.assert_array_equal(_all(dataset.images), expected)
