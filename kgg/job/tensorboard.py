"""TensorBoard event files of a run, in `<out>/tensorboard/<phase>/{train,validation}/`.

Keras' TensorBoard callback writes them; for a local --out straight into that folder, for a
gs:// --out into a folder of the run's work dir that the backup skips, uploaded from there at
every epoch end and when the phase ends (only the files that changed). A resumed run's writer
opens new event files next to the old ones and nothing deletes them, so TensorBoard shows the
whole run; `--restart` deletes the folder with the other results.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kgg.common import storage
from kgg.common.contract import TENSORBOARD_DIR
from kgg.job.runstate import Run


def local_dir(run: Run) -> Path:
    """Where Keras writes the run's event files (see the module docstring)."""
    if storage.is_gcs(run.config.out):
        return run.local_only / TENSORBOARD_DIR
    return Path(run.config.out, TENSORBOARD_DIR)


def sync(run: Run) -> storage.SyncStats | None:
    """Uploads the event files that changed since the last sync; nothing for a local --out."""
    if not storage.is_gcs(run.config.out):
        return None
    return storage.upload_tree(
        local_dir(run),
        storage.join(run.config.out, TENSORBOARD_DIR),
        workers=run.config.workers,
    )


def callback(run: Run, phase: str) -> Any | None:
    """Keras' TensorBoard callback for one phase: epoch scalars (loss, accuracy, micro-F1 and the
    learning rate; validation's in validation/), flushed and synced at every epoch end.

    It must come before the callback that saves the epoch's state: that one may stop the
    process (a simulated kill), and the epoch's scalars are then already in the bucket.

    None, with one line saying so, where the tensorboard package is missing (tf.summary needs
    it): the run goes on without event files rather than failing at its first epoch."""
    import keras

    try:
        import tensorboard  # noqa: F401  (tf.summary's implementation)
    except ImportError:
        print(f"{phase}: no TensorBoard event files: the tensorboard package is not installed")
        return None

    class SyncedTensorBoard(keras.callbacks.TensorBoard):
        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            super().on_epoch_end(epoch, logs)
            # Keras' writers flush every 2 minutes on their own; the bucket gets each epoch.
            # (`_writers` is Keras' own dict of its open summary writers.)
            for writer in getattr(self, "_writers", {}).values():
                writer.flush()
            sync(run)

        def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
            super().on_train_end(logs)  # closes the writers
            sync(run)

    return SyncedTensorBoard(
        log_dir=str(local_dir(run) / phase),
        histogram_freq=0,
        write_graph=False,
        write_images=False,
        update_freq="epoch",
        profile_batch=0,  # no profiler: it needs the profiler plugin and slows the first epochs
    )
