"""VGG16/VGG19 bases and the two model shapes: the 2018 guide's and the fast recipe's.

`preprocess_input` lives inside the model (as a serializable layer), so model.keras takes plain RGB
in [0, 255] and `predict` cannot forget it.
"""

from __future__ import annotations

import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from kgg.common import storage
from kgg.job import pipeline

# keras.applications' "caffe" preprocessing for VGG: RGB -> BGR, minus the ImageNet BGR mean.
# https://github.com/keras-team/keras/blob/master/keras/src/applications/imagenet_utils.py
IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)
WEIGHT_SUFFIXES = (".weights.h5", ".h5", ".hdf5", ".keras")
ACCEPTED_WEIGHTS = (
    "imagenet, none, or a VGG weights file (.weights.h5, or Keras' .h5 as keras.applications "
    "downloads it: without the top for the fast recipe, with it for the guide)"
)
# The registered name of the preprocessing layer: only a model.keras written by `train` has it.
PREPROCESS_CLASS = "workload>VGGPreprocess"


def resolve_weights(spec: str, cache_dir: str | Path) -> str | None:
    """The `weights` argument for keras.applications: "imagenet", None, or a local file path.

    A gs:// file is copied into the cache first; the suffix is kept because Keras picks the
    loader (.weights.h5 or legacy .h5) by it."""
    if spec == "imagenet":
        return "imagenet"
    if spec.lower() in {"none", ""}:
        return None
    if not spec.lower().endswith(WEIGHT_SUFFIXES):
        raise ValueError(
            f"weights {spec!r} must be imagenet, none, or a file ending in {list(WEIGHT_SUFFIXES)}"
        )
    if storage.is_gcs(spec):
        bucket, key = storage.split_gcs(spec)
        local = Path(cache_dir, "weights", bucket, key)
        stats = storage.download_tree(
            spec.rsplit("/", 1)[0], local.parent, progress=False, include=lambda n: n == local.name
        )
        if not local.is_file():
            raise FileNotFoundError(f"weights {spec} not found ({stats.skipped} cached files)")
    else:
        local = Path(spec)
        if not local.is_file():
            raise FileNotFoundError(f"weights file {spec} does not exist")
    if local.name.lower().endswith(".keras") and _is_trained_model(local):
        raise ValueError(
            f"weights {spec} is a model.keras written by `train` (a whole classifier, not VGG "
            f"weights); --weights takes {ACCEPTED_WEIGHTS}. To predict with it: "
            f"kgg predict --model {spec}"
        )
    return str(local)


def _is_trained_model(path: Path) -> bool:
    """Whether a .keras archive is one of ours (its config names our preprocessing layer)."""
    try:
        with zipfile.ZipFile(path) as archive:
            config = archive.read("config.json").decode()
    except (OSError, KeyError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"weights {path} is not a readable .keras file ({type(error).__name__}); "
            f"--weights takes {ACCEPTED_WEIGHTS}"
        ) from error
    return PREPROCESS_CLASS in config or '"VGGPreprocess"' in config


def _preprocess_layer() -> Any:
    import keras

    @keras.saving.register_keras_serializable(package="workload")
    class VGGPreprocess(keras.layers.Layer):
        """keras.applications.vgg16.preprocess_input as a layer, so it is saved with the model."""

        def call(self, inputs: Any) -> Any:
            x = keras.ops.flip(keras.ops.cast(inputs, self.compute_dtype), axis=-1)
            mean = keras.ops.convert_to_tensor(IMAGENET_BGR_MEAN, dtype=self.compute_dtype)
            return x - mean

    return VGGPreprocess


_PREPROCESS: Any = None


def preprocess_layer(**kwargs: Any) -> Any:
    """A new VGG preprocessing layer; the class is defined once, on first use (lazy Keras).

    The models build it with dtype float32: the mean is subtracted exactly, and the first
    convolution rounds the result to a mixed policy's 16 bits once."""
    global _PREPROCESS
    if _PREPROCESS is None:
        _PREPROCESS = _preprocess_layer()
    return _PREPROCESS(**kwargs)


def build_base(base: str, weights: str | None, image_size: int, include_top: bool) -> Any:
    """keras.applications.VGG16/VGG19; include_top keeps fc1/fc2 (the guide's head)."""
    import keras

    application = {"vgg16": keras.applications.VGG16, "vgg19": keras.applications.VGG19}[base]
    if include_top and weights is not None and image_size != 224:
        # fc1's kernel shape depends on the input size: the top weights only fit 224x224.
        raise ValueError(f"the guide recipe with weights needs image_size 224, got {image_size}")
    # With include_top, keras.applications refuses a weight file and classes != 1000: build with
    # 1000 classes, load, and let the caller replace `predictions`.
    if weights in {None, "imagenet"}:
        return application(
            include_top=include_top, weights=weights, input_shape=(image_size, image_size, 3)
        )
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = application(
                include_top=include_top, weights=weights, input_shape=(image_size, image_size, 3)
            )
        # Keras loads what matches and only warns about the rest: a partial load is a mismatch.
        partial = [str(w.message) for w in caught if "Skipping" in str(w.message)]
        if partial:
            raise ValueError(partial[0])
    except (ValueError, OSError, KeyError, TypeError) as error:
        # Keras explains a mismatch in a multi-line dump of both models' layers.
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        top = "with" if include_top else "without"
        raise ValueError(
            f"weights file {weights} does not fit {base} {top} its top layers ({first[:160]}); "
            f"--weights takes {ACCEPTED_WEIGHTS}"
        ) from error
    return model


def build_guide_model(base_model: Any, n_classes: int) -> Any:
    """The 2018 model: VGG with fc1/fc2 kept, `predictions` replaced by Dense(n, softmax)."""
    import keras

    features = keras.Model(base_model.input, base_model.get_layer("fc2").output, name="vgg")
    inputs = keras.Input(base_model.input.shape[1:], name="image")
    x = preprocess_layer(name="preprocess", dtype="float32")(inputs)
    x = features(x)
    outputs = species_output(n_classes)(x)
    return keras.Model(inputs, outputs, name="guide")


def species_output(n_classes: int) -> Any:
    """The new classifier: softmax over the species, glorot_normal as in the guide, float32
    even under mixed precision so the probabilities stay exact."""
    import keras

    return keras.layers.Dense(
        n_classes,
        activation="softmax",
        kernel_initializer="glorot_normal",
        dtype="float32",
        name="species",
    )


def build_feature_extractor(base_model: Any) -> Any:
    """RGB image -> pooled features of the frozen base (the fast recipe's phase 1 input)."""
    import keras

    inputs = keras.Input(base_model.input.shape[1:], name="image")
    x = preprocess_layer(name="preprocess", dtype="float32")(inputs)
    x = base_model(x, training=False)
    outputs = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, outputs, name="features")


# The frozen part of the cached fine-tuning path ends here; the last block (block5) is trained.
FROZEN_OUTPUT = "block4_pool"
# Batches per model.predict call (see predict): 64 x 32 rows of 512 float32 features is 4 MB.
PREDICT_CHUNK_BATCHES = 64


def build_frozen_trunk(base_model: Any) -> Any:
    """RGB image -> `block4_pool` maps of the frozen base: what fine-tuning the last block alone
    never changes, so the job computes it once per image (and per augmented view)."""
    import keras

    trunk = keras.Model(base_model.input, base_model.get_layer(FROZEN_OUTPUT).output)
    inputs = keras.Input(base_model.input.shape[1:], name="image")
    x = preprocess_layer(name="preprocess", dtype="float32")(inputs)
    return keras.Model(inputs, trunk(x, training=False), name="trunk")


def build_last_block(base_model: Any) -> Any:
    """`block4_pool` maps -> pooled features through the base's own block5 layers (shared, so
    training this model trains the base; the full image model sees the same weights)."""
    import keras

    frozen = base_model.get_layer(FROZEN_OUTPUT)
    inputs = keras.Input(frozen.output.shape[1:], name="maps")
    x = inputs
    for layer in base_model.layers[base_model.layers.index(frozen) + 1 :]:
        x = layer(x)
    outputs = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, outputs, name="last_block")


def build_head(features: np.ndarray, n_classes: int, dropout: float) -> Any:
    """Pooled features -> class probabilities; trained on cached features, then reused whole.

    Pooled VGG activations span orders of magnitude between channels (and are tiny with random
    weights): standardising them with the training features' fixed mean and variance lets one
    learning rate fit every feature, with no batch-statistics drift between train and eval."""
    import keras

    inputs = keras.Input((features.shape[1],), name="features")
    variance = features.var(axis=0)
    # Channels that are (nearly) dead on the training set would be divided by ~0 and explode as
    # soon as fine-tuning wakes them up: floor their variance at a fraction of the typical one.
    variance = np.maximum(variance, 1e-2 * float(np.mean(variance)) + 1e-12)
    # The whole head is float32 under mixed precision: float16 would round tiny variances to
    # zero, and 16-bit standardised features would cost accuracy for no speed (it is tiny).
    x = keras.layers.Normalization(
        mean=features.mean(axis=0), variance=variance, name="standardize", dtype="float32"
    )(inputs)
    x = keras.layers.Dropout(dropout, name="dropout", dtype="float32")(x)
    outputs = species_output(n_classes)(x)
    return keras.Model(inputs, outputs, name="head")


def inference_copy(model: Any) -> Any:
    """The same network and weights without optimizer state: half the size of model.keras.

    Also for a compiled model nested in another (the head in phase 2): nested, it would carry
    its optimizer into every checkpoint and model.keras, and Keras warns about it on each load."""
    import keras

    # A new, uncompiled Model over the same layers: `clone_model` would recompile and keep them.
    return keras.Model(model.input, model.output, name=model.name)


def build_finetune_model(feature_extractor: Any, head: Any) -> Any:
    """Image -> features -> head, sharing the layers (and weights) of both."""
    import keras

    inputs = keras.Input(feature_extractor.input.shape[1:], name="image")
    return keras.Model(inputs, inference_copy(head)(feature_extractor(inputs)), name="fast")


def build_maps_model(last_block: Any, head: Any) -> Any:
    """`block4_pool` maps -> last block -> head: phase 2 of the fast recipe on cached maps."""
    import keras

    inputs = keras.Input(last_block.input.shape[1:], name="maps")
    return keras.Model(inputs, inference_copy(head)(last_block(inputs)), name="fast_last_block")


def predict(
    model: Any, images: Any, batch_size: int, verbose: int = 0, jit_compile: bool = False
) -> np.ndarray:
    """`model`'s outputs for every row of `images` (an array or rows on disk), in order, in
    batches of one shape (see pipeline.prediction_batches): its predict function is traced once,
    however often it is called.

    Chunk by chunk (PREDICT_CHUNK_BATCHES batches per model.predict): Keras holds each call's
    outputs twice while it concatenates them, so one call over every image would hold the
    whole output twice; here each chunk goes into the result as it comes. Every chunk but the
    last is whole batches, so the batches are those of one call over everything.

    `jit_compile`: XLA (runtime.Runtime.jit_compile), which model.predict reads from the model."""
    if model.jit_compile != jit_compile:
        model.jit_compile = jit_compile
    chunk = PREDICT_CHUNK_BATCHES * batch_size
    result: np.ndarray | None = None
    for start in range(0, len(images), chunk):
        part = images[start : start + chunk]  # a view, of rows on disk too: nothing read yet
        batches = pipeline.prediction_batches(part, batch_size)
        out = model.predict(batches, verbose=verbose)[: len(part)]
        if result is None:
            result = np.empty((len(images), *out.shape[1:]), out.dtype)
        result[start : start + len(part)] = out
    if result is None:  # no rows: one call gives the output's shape and dtype
        empty = pipeline.prediction_batches(images, batch_size)
        return model.predict(empty, verbose=verbose)[:0]
    return result


def compute_in(model: Any, policy: str) -> None:
    """Makes the layers that a mixed policy ran in (model.keras keeps the policy it was trained
    in) compute in `policy`, the one this machine runs fastest; layers built float32 on purpose
    (the head, the softmax, the preprocessing) stay float32. Variables are float32 under every
    policy, so only the arithmetic changes. Call it before the model's first use."""
    import keras

    for layer in _layers(model):
        if layer.dtype_policy.name.startswith("mixed_"):
            layer.dtype_policy = keras.DTypePolicy(policy)


def _layers(model: Any) -> Iterator[Any]:
    """Every layer of a model, nested models' layers included."""
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _layers(layer)


def reseed_random_layers(model: Any, seed: tuple[int, ...]) -> None:
    """Draws this epoch's dropout masks from `seed` (the run's seed, phase and epoch) alone.

    A layer's random generator advances with every step and is not in the checkpoint: without
    this, a resumed run would draw other masks than the uninterrupted run did."""
    import keras

    rng = np.random.default_rng(seed)
    for layer in _layers(model):
        generator = getattr(layer, "seed_generator", None)
        if isinstance(generator, keras.random.SeedGenerator):
            state = generator.state
            value = np.array([rng.integers(1, 2**30), 0], dtype=state.dtype)
            state.assign(value)


def unfreeze_last_blocks(base_model: Any, blocks: int) -> list[str]:
    """Makes the last `blocks` conv blocks trainable (VGG names them block1..block5)."""
    trainable_blocks = {f"block{b}" for b in range(6 - blocks, 6)}
    base_model.trainable = True
    unfrozen = []
    for layer in base_model.layers:
        layer.trainable = layer.name.split("_")[0] in trainable_blocks
        if layer.trainable and layer.weights:
            unfrozen.append(layer.name)
    return unfrozen
