"""`python -m workload predict`: species for new images with a trained model.keras."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from workload import data as data_lib
from workload import storage

PREDICTIONS_FILE = "predictions.csv"


def _model_file(model: str, scratch: Path) -> tuple[Path, list[str]]:
    """A local model.keras and its class names (class_names.json beside it)."""
    folder = model.rsplit("/", 1)[0] if model.endswith(".keras") else model.rstrip("/")
    model_url = model if model.endswith(".keras") else storage.join(folder, "model.keras")
    class_names = storage.read_json(storage.join(folder, "class_names.json"))
    if class_names is None:
        raise FileNotFoundError(f"no class_names.json next to {model_url}")
    if not storage.is_gcs(model_url):
        if not Path(model_url).is_file():
            raise FileNotFoundError(f"model {model_url} does not exist")
        return Path(model_url), class_names
    data = storage.read_bytes(model_url)
    if data is None:
        raise FileNotFoundError(f"model {model_url} does not exist")
    local = scratch / "model.keras"
    local.write_bytes(data)
    return local, class_names


def predict(model: str, images: str, out: str, cache_dir: str) -> Path | str:
    """Writes `file,species,confidence` for every readable image under `images`; returns where."""
    import keras

    from workload import model as model_lib

    model_lib.preprocess_layer()  # registers the custom layer before loading
    with tempfile.TemporaryDirectory(prefix="kgg-predict-") as scratch:
        local_model, class_names = _model_file(model, Path(scratch))
        network = keras.models.load_model(local_model, compile=False)
        size = int(network.inputs[0].shape[1])
        folder = data_lib.fetch_data(images, cache_dir)
        files = data_lib.discover_test(folder)
        pixels, ok, skipped = data_lib.load_images(folder, files, size, cache_dir)
        for item in skipped:
            print(f"skipped {item['file']}: {item['reason']}")
        if not ok:
            raise data_lib.DataError(f"no readable image under {images}")
        probs = network.predict(pixels.astype(np.float32), verbose=0)
    from workload.report import predictions_csv

    target = out if out.endswith(".csv") else storage.join(out, PREDICTIONS_FILE)
    csv = predictions_csv([files[i] for i in ok], probs, class_names, with_confidence=True)
    storage.write_bytes(target, csv.encode(), content_type="text/csv")
    print(f"wrote {len(ok)} predictions to {target}")
    return target
