"""The fitting loop of one phase, resumable at any epoch, and its per-epoch checkpoint keeper.

Each epoch's history row, latest and best weights, early-stopping state and progress are saved
before the next epoch starts (kgg.job.runstate), so a rerun continues after the last finished
epoch on the trajectory the uninterrupted run would have taken.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from kgg.common.contract import METRIC_ID
from kgg.job import tensorboard
from kgg.job.atomic import atomic_path
from kgg.job.console import keras_verbose
from kgg.job.runstate import Run

MONITOR = f"val_{METRIC_ID}"
# Second component of each phase's random seed: the phases draw apart from each other.
PHASE_STREAMS = {"head": 1, "finetune": 2, "guide": 3}
# What progress.json reports of an epoch's logs.
PROGRESS_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", MONITOR)

# Builds a phase's data for the epochs still to run and the phase's seed: (training batches,
# steps per epoch, validation batches); called only when the phase trains (it may compute maps).
Batches = Callable[[range, tuple[int, ...]], tuple[Any, int, Any]]


def compile_model(model: Any, optimizer: Any, jit_compile: bool = False) -> None:
    """Loss and metrics of every phase. Under mixed_float16 Keras wraps the optimizer in a
    LossScaleOptimizer (compile's auto_scale_loss); bfloat16 needs no loss scaling."""
    import keras

    model.compile(
        optimizer=optimizer,
        loss="categorical_crossentropy",
        metrics=["accuracy", keras.metrics.F1Score(average="micro", name=METRIC_ID)],
        jit_compile=jit_compile,
    )


def save_arrays(path: Path, arrays: list[np.ndarray]) -> None:
    """`arrays` as one .npz, replaced atomically."""
    with atomic_path(path) as tmp:
        np.savez(tmp, *arrays)


def load_arrays(run: Run, path: Path) -> list[np.ndarray]:
    """A checkpoint's arrays; CheckpointError naming it when it is missing or unreadable."""
    try:
        with np.load(path) as archive:
            return [archive[f"arr_{i}"] for i in range(len(archive.files))]
    except (OSError, ValueError, EOFError, KeyError) as error:  # BadZipFile is an OSError
        raise run.corrupt(path, error) from error


def _latest_weights(run: Run, phase: str, epochs_done: int) -> Path:
    """Where the weights after `epochs_done` epochs are: two slots written in turn, so a kill
    between writing an epoch's weights and its state.json leaves the weights that state.json
    names untouched, locally and in the bucket."""
    return run.work / f"{phase}.latest.{epochs_done % 2}.weights.h5"


class EpochKeeper:
    """Per epoch: history row, latest/best weights, early stopping, state, progress, backup."""

    def __init__(
        self,
        run: Run,
        phase: str,
        model: Any,
        epochs: int,
        n_train: int,
        eta_extra: float,
        seed: tuple[int, ...],
    ) -> None:
        self.run = run
        self.phase = phase
        self.model = model
        self.epochs = epochs
        self.n_train = n_train
        self.eta_extra = eta_extra
        self.seed = seed
        self.monitor = phase in {"head", "finetune"}
        self.best = run.work / f"{phase}.best.npz"
        self.started = 0.0

    def callback(self) -> Any:
        """The Keras callback that calls this keeper at each epoch's start and end."""
        import keras

        return keras.callbacks.LambdaCallback(
            on_epoch_begin=lambda epoch, logs: self.begin(epoch),
            on_epoch_end=lambda epoch, logs: self.end(epoch, logs),
        )

    def begin(self, epoch: int) -> None:
        """Starts the epoch's clock; draws its dropout from the seed and the epoch alone."""
        from kgg.job import model as model_lib

        self.started = time.perf_counter()
        model_lib.reseed_random_layers(self.model, (*self.seed, epoch, 0, 0))

    def end(self, epoch: int, logs: dict[str, Any] | None) -> None:
        """Records the finished epoch, saves its state, and stops early when it is time."""
        import keras

        run, phase, model = self.run, self.phase, self.model
        ps = run.phase(phase)
        logs = {k: float(v) for k, v in (logs or {}).items()}
        seconds = time.perf_counter() - self.started
        learning_rate = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
        run.state["history"].append(
            {
                "phase": phase,
                "epoch": epoch + 1,
                **logs,
                "learning_rate": learning_rate,
                "seconds": seconds,
            }
        )
        with atomic_path(_latest_weights(run, phase, epoch + 1)) as tmp:
            model.save_weights(tmp)
        ps.epochs_done = epoch + 1
        ps.seconds += seconds
        ps.images += self.n_train
        if self.monitor:
            self._early_stopping(logs.get(MONITOR, 0.0))
        run.save()
        remaining = 0 if ps.stopped else self.epochs - ps.epochs_done
        mean = ps.seconds / ps.epochs_done if ps.epochs_done else 0.0
        run.progress(
            "running",
            phase,
            ps.epochs_done,
            self.epochs,
            {k: logs[k] for k in PROGRESS_KEYS if k in logs},
            eta_seconds=round(remaining * mean + self.eta_extra, 1),
            images_per_second=round(ps.images / ps.seconds, 2) if ps.seconds else None,
        )
        run.finished_epoch()

    def _early_stopping(self, value: float) -> None:
        """Keeps the best epoch's weights; stops after `patience` epochs without a better one."""
        ps = self.run.phase(self.phase)
        patience = self.run.config.patience
        if ps.best is None or value > ps.best:
            ps.best, ps.wait = value, 0
            # Model weights only (no optimizer state): half the bytes to back up.
            save_arrays(self.best, self.model.get_weights())
            return
        ps.wait += 1
        if ps.wait >= patience:
            ps.stopped = True
            self.model.stop_training = True
            print(f"{self.phase}: {MONITOR} did not improve for {patience} epochs")


def fit_phase(
    run: Run,
    runtime: Any,
    phase: str,
    model: Any,
    batches: Batches,
    epochs: int,
    n_train: int,
    eta_extra: float = 0.0,
    baseline: float | None = None,
) -> None:
    """Fits one phase from where the backup left it; restores the best epoch when monitored.

    `baseline` is the monitored value of the weights the phase starts from: fine-tuning that
    never beats the head alone ends with the head's weights, not with a worse model."""
    ps = run.phase(phase)
    done_path = run.work / f"{phase}.done.npz"
    if ps.done:
        model.set_weights(load_arrays(run, done_path))
        return
    best = run.work / f"{phase}.best.npz"
    if baseline is not None and ps.best is None:
        save_arrays(best, model.get_weights())
        ps.best = baseline
    if ps.epochs_done:
        latest = _latest_weights(run, phase, ps.epochs_done)
        with runtime.strategy.scope():
            model.optimizer.build(model.trainable_variables)
        try:
            model.load_weights(latest)
        except (OSError, ValueError, KeyError) as error:
            raise run.corrupt(latest, error) from error
        print(f"{phase}: continuing after epoch {ps.epochs_done}/{epochs}")
    if ps.epochs_done < epochs and not ps.stopped:
        print(f"{phase}: {epochs} epochs on {n_train} images")
        seed = (run.config.seed, PHASE_STREAMS[phase])
        train_ds, steps, val_ds = batches(range(ps.epochs_done, epochs), seed)
        keeper = EpochKeeper(run, phase, model, epochs, n_train, eta_extra, seed)
        model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=epochs,
            initial_epoch=ps.epochs_done,
            steps_per_epoch=steps,
            callbacks=[
                # Before the epoch's state is saved: a kill right after finds its scalars synced.
                *filter(None, [tensorboard.callback(run, phase)]),
                keeper.callback(),
            ],
            verbose=keras_verbose(),
            shuffle=False,  # each epoch's order is drawn by the dataset (pipeline.epoch_rows)
        )
    if phase != "guide" and best.is_file():
        model.set_weights(load_arrays(run, best))
        print(f"{phase}: restored the best epoch ({MONITOR} {ps.best:.4f})")
    save_arrays(done_path, model.get_weights())
    ps.done = True
    run.save()
