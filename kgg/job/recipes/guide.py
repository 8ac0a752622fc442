"""The 2018 recipe: VGG with fc1/fc2, all layers trained with SGD, no augmentation."""

from __future__ import annotations

from typing import Any

from kgg.job import pipeline
from kgg.job.fitting import compile_model, fit_phase
from kgg.job.recipes.inputs import Inputs
from kgg.job.runstate import Run


def train_guide(run: Run, runtime: Any, resolved: str | None, inputs: Inputs) -> Any:
    """The guide's model, trained (or resumed) for config.guide_epochs epochs."""
    import keras

    from kgg.job import model as model_lib

    config = run.config
    run.current_phase = "guide"
    ps = run.phase("guide")
    fresh = not ps.done and not ps.epochs_done
    with runtime.strategy.scope():
        base = model_lib.build_base(
            config.base, resolved if fresh else None, config.image_size, include_top=True
        )
        model = model_lib.build_guide_model(base, inputs.n_classes)
        # Keras 2's `decay=1e-6`: lr / (1 + decay * iterations), as a schedule in Keras 3.
        schedule = keras.optimizers.schedules.InverseTimeDecay(
            config.guide_lr, decay_steps=1, decay_rate=config.guide_decay
        )
        compile_model(
            model,
            keras.optimizers.SGD(schedule, momentum=config.guide_momentum, nesterov=True),
            runtime.jit_compile,
        )
    batch = runtime.batch(config.batch_size)

    def batches(epochs: range, seed: tuple[int, ...]) -> tuple[Any, int, Any]:
        train_ds, steps = pipeline.training_dataset(
            inputs.x_train, inputs.y_train, inputs.n_classes, batch, None, seed, epochs
        )
        val_ds = pipeline.make_dataset(inputs.x_val, inputs.y_val, inputs.n_classes, batch)
        return train_ds, steps, val_ds

    fit_phase(run, runtime, "guide", model, batches, config.guide_epochs, len(inputs.x_train))
    return model
