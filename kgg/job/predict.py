"""`kgg predict`: species for new images with a trained model.keras.

Every path is checked before the model is loaded (seconds of TensorFlow import and loading): a
wrong --images or --model fails at once, in one line."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from kgg.common import storage
from kgg.job import folders
from kgg.job import images as images_lib
from kgg.job import model as model_lib

PREDICTIONS_FILE = "predictions.csv"
MODEL_FILE = "model.keras"
BATCH_SIZE = 32


class ModelError(ValueError):
    """The model cannot be used; the message names it and what is expected."""


def _model_file(model: str, scratch: Path) -> tuple[Path, str, list[str]]:
    """A local copy of the model (or the file itself), its URL, and its class names (from
    class_names.json beside it)."""
    folder = model.rsplit("/", 1)[0] if model.endswith(".keras") else model.rstrip("/")
    model_url = model if model.endswith(".keras") else storage.join(folder, MODEL_FILE)
    expected = "the results folder of a `train` run (model.keras and class_names.json)"
    if storage.is_gcs(model_url):
        payload = storage.read_bytes(model_url)
        if payload is None:
            raise FileNotFoundError(f"model {model_url} does not exist; --model takes {expected}")
        local = scratch / MODEL_FILE
        local.write_bytes(payload)
    else:
        local = Path(model_url)
        if not local.is_file():
            raise FileNotFoundError(f"model {model_url} does not exist; --model takes {expected}")
    try:
        class_names = storage.read_json(storage.join(folder, "class_names.json"))
    except ValueError as error:
        raise ModelError(f"class_names.json next to {model_url} is unreadable: {error}") from error
    if not (isinstance(class_names, list) and all(isinstance(c, str) for c in class_names)):
        raise ModelError(f"no list of class names in class_names.json next to {model_url}")
    return local, model_url, class_names


def _image_files(images: str, cache_dir: str) -> tuple[Path, list[str]]:
    """The local folder of `images` and its files; a missing or empty folder raises DataError."""
    folder = folders.fetch_data(images, cache_dir)
    if not folder.is_dir():
        raise folders.DataError(f"images folder {images} does not exist")
    files = folders.discover_test(folder)
    if not files:
        raise folders.DataError(f"images folder {images} has no files; expected *.png or *.jpg")
    return folder, files


def _load(local_model: Path, model_url: str, class_names: list[str]) -> Any:
    """The Keras model, computing in this machine's precision (a model trained in bfloat16 or
    float16 on a GPU would crawl on a laptop's CPU), or a one-line ModelError for a file that
    is not one of ours."""
    import keras

    from kgg.job import runtime

    model_lib.preprocess_layer()  # registers the custom layer before loading
    try:
        network = keras.models.load_model(local_model, compile=False)
    except Exception as error:  # a truncated zip, a foreign file: Keras raises many kinds
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ModelError(
            f"model {model_url} cannot be loaded ({type(error).__name__}: {first[:160]}); "
            "use the model.keras of a finished `train` run"
        ) from error
    outputs = int(network.outputs[0].shape[-1])
    if outputs != len(class_names):
        raise ModelError(
            f"model {model_url} predicts {outputs} classes, but class_names.json beside it "
            f"lists {len(class_names)}; use the two files of one run"
        )
    model_lib.compute_in(network, runtime.local_precision().policy)
    return network


def predict(model: str, images: str, out: str, cache_dir: str) -> Path | str:
    """Writes `file,species,confidence` for every readable image under `images`; returns where."""
    with tempfile.TemporaryDirectory(prefix="kgg-predict-") as scratch:
        local_model, model_url, class_names = _model_file(model, Path(scratch))
        folder, files = _image_files(images, cache_dir)
        network = _load(local_model, model_url, class_names)
        size = int(network.inputs[0].shape[1])
        pixels, ok, skipped = images_lib.load_images(folder, files, size, cache_dir)
        for item in skipped:
            print(f"skipped {item['file']}: {item['reason']}")
        if not ok:
            raise folders.DataError(f"no readable image under {images}")
        probs = model_lib.predict(network, pixels, BATCH_SIZE)
    from kgg.job.report import predictions_csv

    target = out if out.endswith(".csv") else storage.join(out, PREDICTIONS_FILE)
    csv = predictions_csv([files[i] for i in ok], probs, class_names, with_confidence=True)
    storage.write_bytes(target, csv.encode(), content_type="text/csv")
    print(f"wrote {len(ok)} predictions to {target}")
    return target
