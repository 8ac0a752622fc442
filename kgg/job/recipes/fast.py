"""The fast recipe: phase 1 on cached features of the frozen base, phase 2 fine-tuning its last
block(s).

With one block unfrozen (the default), nothing below block5 ever changes: the features phase
caches the `block4_pool` maps of every image once (kgg.job.maps), and phase 2 trains block5 +
head on them (~5x faster per step than rerunning the frozen forward). Its augmentation is exact
but limited to horizontal flips, cached as a second view of every training image: each further
view (a vertical flip, a rotation) would cost one more frozen forward over the training set, and
random rotations per step cannot be cached at all. With more blocks unfrozen, phase 2 trains on
images with flips and 90-degree rotations.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from kgg.job import pipeline
from kgg.job.atomic import atomic_path
from kgg.job.fitting import compile_model, fit_phase, load_arrays, save_arrays
from kgg.job.maps import MAPS_VIEWS, MapsCache, pooled_features
from kgg.job.recipes.inputs import Inputs
from kgg.job.runstate import Run

# block5's share of VGG16's forward FLOPs (any input size; bench/flops.py counts them): the cost
# of a fine-tuning step on cached block4 maps relative to one on images, for the ETA.
LAST_BLOCK_SHARE = 0.1


@dataclass(frozen=True)
class Features:
    """The frozen base's pooled features of the training and validation images (unaugmented),
    and how fast the features pass went (images per second), for the fine-tuning ETA."""

    train: np.ndarray
    val: np.ndarray
    images_per_second: float


class FastRecipe:
    """The three steps, each resumed from the run's state: features, head, fine-tuning."""

    def __init__(self, run: Run, runtime: Any, resolved: str | None, inputs: Inputs) -> None:
        from kgg.job import model as model_lib

        config = run.config
        self.run, self.runtime, self.inputs = run, runtime, inputs
        self.on_maps = config.unfreeze_blocks == 1
        self.views = MAPS_VIEWS if config.augment else 1
        self.batch = runtime.batch(config.batch_size)
        self.xla = runtime.jit_compile
        self.train_weights = inputs.class_weights[inputs.y_train]
        features_done = run.phase("features").done
        with runtime.strategy.scope():
            self.base = model_lib.build_base(
                config.base,
                None if features_done else resolved,
                config.image_size,
                include_top=False,
            )
            self.base.trainable = False
            self.extractor = model_lib.build_feature_extractor(self.base)
            trunk = model_lib.build_frozen_trunk(self.base) if self.on_maps else None
            self.last_block = model_lib.build_last_block(self.base) if self.on_maps else None
        self.maps = MapsCache(
            run,
            trunk,
            inputs.x_train,
            inputs.x_val,
            self.views,
            self.batch,
            runtime.precision.policy,
            self.xla,
        )

    def train(self) -> Any:
        """The full image -> probabilities model, trained (or resumed) through every step."""
        features = self.features()
        head = self.head(features)
        model = self.finetune(head)
        self.maps.release()
        return model

    def features(self) -> Features:
        """One pass of the frozen base over every image (on cached block4 maps when only the
        last block is fine-tuned), once per run: a resumed run reads what it saved."""
        run, x_train, x_val = self.run, self.inputs.x_train, self.inputs.x_val
        run.current_phase = "features"
        ps = run.phase("features")
        base_path, features_path = run.work / "base.npz", run.work / "features.npz"
        if ps.done:
            self.base.set_weights(load_arrays(run, base_path))
            try:
                with np.load(features_path) as cached:
                    f_train, f_val = cached["train"], cached["val"]
            except (OSError, ValueError, EOFError, KeyError) as error:
                raise run.corrupt(features_path, error) from error
        else:
            run.progress("running", "features", 0, 1)
            started = time.perf_counter()
            print(
                f"features: one pass of the frozen {run.config.base} over "
                f"{len(x_train) + len(x_val)} images"
            )
            if self.on_maps:
                train_maps, val_maps = self.maps.load()
                # Unaugmented features for the head: the first view, block5 + pooling on maps.
                f_train = pooled_features(
                    self.last_block, train_maps[: len(x_train)], self.batch, self.xla
                )
                f_val = pooled_features(self.last_block, val_maps, self.batch, self.xla)
                images = self.views * len(x_train) + len(x_val)
            else:
                f_train = pooled_features(self.extractor, x_train, self.batch, self.xla)
                f_val = pooled_features(self.extractor, x_val, self.batch, self.xla)
                images = len(x_train) + len(x_val)
            seconds = time.perf_counter() - started
            save_arrays(base_path, self.base.get_weights())
            with atomic_path(features_path) as tmp:
                np.savez(tmp, train=f_train, val=f_val)
            ps.done, ps.epochs_done, ps.seconds, ps.images = True, 1, seconds, images
            run.save()
            run.progress(
                "running", "features", 1, 1, images_per_second=round(ps.images / seconds, 2)
            )
            run.finished_epoch()
        return Features(f_train, f_val, ps.images / max(ps.seconds, 1e-9))

    def head(self, features: Features) -> Any:
        """The classifier head, trained on the pooled features with the class weights."""
        import keras

        from kgg.job import model as model_lib

        config, inputs = self.run.config, self.inputs
        self.run.current_phase = "head"
        with self.runtime.strategy.scope():
            head = model_lib.build_head(features.train, inputs.n_classes, config.head_dropout)
            compile_model(head, keras.optimizers.Adam(config.head_lr), self.xla)
        fit_phase(
            self.run,
            self.runtime,
            "head",
            head,
            functools.partial(self._head_batches, features),
            config.head_epochs,
            len(features.train),
            eta_extra=config.finetune_epochs * self._finetune_epoch_seconds(features),
        )
        return head

    def finetune(self, head: Any) -> Any:
        """The last block(s) unfrozen and trained with the head; ends with the head alone's
        weights when fine-tuning never beats them."""
        import keras

        from kgg.job import model as model_lib

        config = self.run.config
        self.run.current_phase = "finetune"
        with self.runtime.strategy.scope():
            unfrozen = model_lib.unfreeze_last_blocks(self.base, config.unfreeze_blocks)
            # The full image -> probabilities model: evaluated and saved, whichever trains it.
            model = model_lib.build_finetune_model(self.extractor, head)
            trained = model_lib.build_maps_model(self.last_block, head) if self.on_maps else model
            compile_model(trained, keras.optimizers.Adam(config.finetune_lr), self.xla)
        print(
            f"finetune: trainable {unfrozen}" + (" on cached block4 maps" if self.on_maps else "")
        )
        if config.finetune_epochs > 0:
            fit_phase(
                self.run,
                self.runtime,
                "finetune",
                trained,
                self._finetune_batches,
                config.finetune_epochs,
                len(self.inputs.x_train),
                baseline=self.run.phase("head").best,
            )
        return model

    def _finetune_epoch_seconds(self, features: Features) -> float:
        # About a forward pass over validation plus ~3 passes over train, of the last block only
        # on cached maps.
        share = LAST_BLOCK_SHARE if self.on_maps else 1.0
        n_train, n_val = len(self.inputs.x_train), len(self.inputs.x_val)
        return share * (3 * n_train + n_val) / features.images_per_second

    def _head_batches(
        self, features: Features, epochs: range, seed: tuple[int, ...]
    ) -> tuple[Any, int, Any]:
        inputs = self.inputs
        train_ds, steps = pipeline.training_dataset(
            features.train,
            inputs.y_train,
            inputs.n_classes,
            self.batch,
            self.train_weights,
            seed,
            epochs,
        )
        val_ds = pipeline.make_dataset(features.val, inputs.y_val, inputs.n_classes, self.batch)
        return train_ds, steps, val_ds

    def _finetune_batches(self, epochs: range, seed: tuple[int, ...]) -> tuple[Any, int, Any]:
        inputs, batch = self.inputs, self.batch
        if self.on_maps:
            train_maps, val_maps = self.maps.load()
            train_ds, steps = pipeline.training_dataset(
                train_maps,
                inputs.y_train,
                inputs.n_classes,
                batch,
                self.train_weights,
                seed,
                epochs,
                views=self.views,
            )
            return (
                train_ds,
                steps,
                pipeline.make_dataset(val_maps, inputs.y_val, inputs.n_classes, batch),
            )
        train_ds, steps = pipeline.training_dataset(
            inputs.x_train,
            inputs.y_train,
            inputs.n_classes,
            batch,
            self.train_weights,
            seed,
            epochs,
            augment=self.run.config.augment,
        )
        return (
            train_ds,
            steps,
            pipeline.make_dataset(inputs.x_val, inputs.y_val, inputs.n_classes, batch),
        )
