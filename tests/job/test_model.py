"""model: the weights argument given to keras.applications, and weight files local and gs://."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kgg.common import storage
from kgg.job import model
from tests.job.conftest import TINY


def test_imagenet_and_none_pass_through_to_keras_applications(tmp_path: Path) -> None:
    assert model.resolve_weights("imagenet", tmp_path) == "imagenet"
    assert model.resolve_weights("none", tmp_path) is None


def test_build_base_hands_imagenet_to_keras_applications(monkeypatch: pytest.MonkeyPatch) -> None:
    import keras

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(keras.applications, "VGG19", lambda **kwargs: calls.append(kwargs))
    model.build_base("vgg19", "imagenet", 224, include_top=False)
    assert calls == [{"include_top": False, "weights": "imagenet", "input_shape": (224, 224, 3)}]


def test_weights_with_an_unknown_suffix_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"weights\.bin"):
        model.resolve_weights(str(tmp_path / "weights.bin"), tmp_path)


def _saved_base(path: Path) -> list[np.ndarray]:
    """A tiny VGG16 base with random weights saved to `path` (.weights.h5 or legacy .h5)."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    base = model.build_base("vgg16", None, TINY, include_top=False)
    if path.name.endswith(".weights.h5"):
        base.save_weights(path)
    else:
        with h5py.File(path, "w") as handle:
            legacy_h5_format.save_weights_to_hdf5_group(handle, base)
    return base.get_weights()


@pytest.mark.parametrize("name", ["base.weights.h5", "vgg16_notop.h5"])
def test_weights_file_is_loaded_into_the_base(tmp_path: Path, name: str) -> None:
    saved = _saved_base(tmp_path / name)
    resolved = model.resolve_weights(str(tmp_path / name), tmp_path / "cache")
    loaded = model.build_base("vgg16", resolved, TINY, include_top=False).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(saved, loaded, strict=True))


def test_gs_weights_file_is_fetched_and_loaded(gcs_bucket: str, tmp_path: Path) -> None:
    saved = _saved_base(tmp_path / "vgg16.weights.h5")
    url = f"gs://{gcs_bucket}/weights/vgg16.weights.h5"
    storage.upload_file(tmp_path / "vgg16.weights.h5", url)
    resolved = model.resolve_weights(url, tmp_path / "cache")
    assert resolved is not None
    assert resolved.endswith("vgg16.weights.h5")
    loaded = model.build_base("vgg16", resolved, TINY, include_top=False).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(saved, loaded, strict=True))


def test_missing_gs_weights_file_is_an_error_naming_it(gcs_bucket: str, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.h5"):
        model.resolve_weights(f"gs://{gcs_bucket}/nope.h5", tmp_path)


def test_unfreezing_one_block_trains_only_block5() -> None:
    base = model.build_base("vgg16", None, TINY, include_top=False)
    base.trainable = False
    assert model.unfreeze_last_blocks(base, 1) == ["block5_conv1", "block5_conv2", "block5_conv3"]
    assert len(base.trainable_weights) == 6


def test_guide_model_keeps_fc1_fc2_and_replaces_the_output() -> None:
    base = model.build_base("vgg16", None, TINY, include_top=True)
    guide = model.build_guide_model(base, 3)
    assert guide.output.shape[-1] == 3
    assert guide.get_layer("vgg").get_layer("fc2").output.shape[-1] == 4096
    assert all(layer.trainable for layer in guide.layers)


def test_preprocessing_matches_keras_vgg16_preprocess_input() -> None:
    import keras

    images = np.random.default_rng(0).uniform(0, 255, (2, TINY, TINY, 3)).astype("float32")
    ours = keras.ops.convert_to_numpy(model.preprocess_layer()(images))
    theirs = keras.applications.vgg16.preprocess_input(images.copy())
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-4)


def test_full_model_predicts_as_the_last_block_on_cached_maps_after_training_it(
    tmp_path: Path,
) -> None:
    """Phase 2 trains block5 + head on cached block4 maps; the saved image model must agree."""
    import keras

    from kgg.job.fitting import compile_model
    from kgg.job.maps import pooled_features, write_frozen_maps

    base = model.build_base("vgg16", None, TINY, include_top=False)
    base.trainable = False
    trunk, last_block = model.build_frozen_trunk(base), model.build_last_block(base)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (10, TINY, TINY, 3)).astype(np.uint8)
    write_frozen_maps(trunk, images, 4, tmp_path / "maps.npy", views=2)
    maps = np.load(tmp_path / "maps.npy")
    head = model.build_head(pooled_features(last_block, maps[:10], 4), 3, 0.0)
    model.unfreeze_last_blocks(base, 1)
    on_maps = model.build_maps_model(last_block, head)
    compile_model(on_maps, keras.optimizers.Adam(1e-2))
    untrained = on_maps.predict(maps[:10].astype(np.float32), verbose=0)
    on_maps.fit(maps, np.eye(3)[rng.integers(0, 3, 20)], epochs=1, verbose=0)
    full = model.build_finetune_model(model.build_feature_extractor(base), head)
    from_images = full.predict(images.astype(np.float32), verbose=0)
    from_maps = on_maps.predict(maps[:10].astype(np.float32), verbose=0)
    # float16 maps: agreement to a few thousandths of probability.
    np.testing.assert_allclose(from_maps, from_images, atol=2e-3)
    assert not np.allclose(untrained, from_maps, atol=1e-2)  # block5 and head did change
    assert maps.dtype == np.float16


def test_second_view_of_the_cached_maps_is_the_left_right_flipped_image(tmp_path: Path) -> None:
    from kgg.job.maps import write_frozen_maps

    base = model.build_base("vgg16", None, TINY, include_top=False)
    trunk = model.build_frozen_trunk(base)
    images = np.random.default_rng(1).integers(0, 255, (3, TINY, TINY, 3)).astype(np.uint8)
    write_frozen_maps(trunk, images, 2, tmp_path / "maps.npy", views=2)
    maps = np.load(tmp_path / "maps.npy").astype(np.float32)
    flipped = trunk.predict(images[:, :, ::-1].astype(np.float32), verbose=0)
    np.testing.assert_allclose(maps[3:], flipped, rtol=2e-3, atol=1e-3 * np.abs(flipped).max())
    assert not np.allclose(maps[:3], maps[3:])
