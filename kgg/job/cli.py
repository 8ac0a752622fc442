"""`kgg train|predict`: the training job's commands (kgg/cli/main.py adds them).

Importing this module never imports TensorFlow: `--help` and the laptop commands share its
parser. Each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

# Exit codes of `train` and `predict` (README "Exit codes"), the contract's: the agent reads them.
# EXIT_USAGE: bad data, path, option or model; data or options that differ from --out's run.
# EXIT_RETRY: interrupted (SIGTERM, a simulated kill); the same command resumes.
from kgg.common.contract import CLI_NAME, EXIT_RETRY, EXIT_USAGE, METRIC_ID
from kgg.job.config import BASES, DEFAULT_CACHE_DIR, RECIPES, TrainConfig
from kgg.job.runtime import PRECISIONS


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig(data="", out="")
    add = parser.add_argument
    add(
        "--recipe",
        choices=RECIPES,
        default="fast",
        help="fast: cached features then fine-tuning (default); guide: the 2018 recipe",
    )
    add("--base", choices=BASES, default="vgg16", help="convolutional base (default vgg16)")
    add(
        "--weights",
        default="imagenet",
        help="imagenet, none, or a weights file (.h5 or .weights.h5, local or gs://)",
    )
    add("--image-size", type=int, help="square input size (default 224)")
    add("--batch-size", type=int, help="batch size (default 32)")
    add(
        "--val-split",
        type=float,
        help=f"validation fraction: chooses epochs, never scored (default {defaults.val_split})",
    )
    add(
        "--holdout",
        type=float,
        help="held-out fraction of each class, never trained or chosen on: the headline score "
        "(default 0.1 for fast, 0 for guide, which scores its last epoch on validation)",
    )
    add("--seed", type=int, help=f"split and initialisation seed (default {defaults.seed})")
    add("--head-epochs", type=int, help=f"fast: head epochs (default {defaults.head_epochs})")
    add("--head-lr", type=float, help=f"fast: head learning rate (default {defaults.head_lr})")
    add(
        "--finetune-epochs",
        type=int,
        help=f"fast: fine-tuning epochs (default {defaults.finetune_epochs})",
    )
    add(
        "--finetune-lr",
        type=float,
        help=f"fast: fine-tuning learning rate (default {defaults.finetune_lr})",
    )
    add(
        "--unfreeze-blocks",
        type=int,
        help=f"fast: conv blocks to fine-tune (default {defaults.unfreeze_blocks})",
    )
    add(
        "--patience",
        type=int,
        help=f"fast: early-stopping patience on val micro-F1 (default {defaults.patience})",
    )
    add("--guide-epochs", type=int, help=f"guide: epochs (default {defaults.guide_epochs})")
    add("--guide-lr", type=float, help=f"guide: SGD learning rate (default {defaults.guide_lr})")
    add(
        "--cache-dir",
        help=f"local cache for data, images and features (default {DEFAULT_CACHE_DIR})",
    )
    add("--workers", type=int, help=f"parallel transfers (default {defaults.workers})")
    add(
        "--precision",
        choices=PRECISIONS,
        help="arithmetic: auto (default) picks bfloat16 on GPUs of compute capability >= 8.0 "
        "and CPUs with AVX512_BF16/AMX, float16 on GPUs of 7.x, float32 elsewhere",
    )
    add(
        "--restart",
        action="store_true",
        help="start over when --out holds a run this command cannot resume or report (other "
        "data or options, an unreadable checkpoint); a matching run still resumes",
    )
    add(
        "--no-progress",
        dest="progress",
        action="store_false",
        default=None,
        help="no progress bars (logs)",
    )


TRAIN_OPTIONS = (
    "base", "weights", "image_size", "batch_size", "val_split", "holdout", "seed", "head_epochs",
    "head_lr",
    "finetune_epochs", "finetune_lr", "unfreeze_blocks", "patience", "guide_epochs", "guide_lr",
    "cache_dir", "workers", "progress", "precision",
)  # fmt: skip


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The resolved TrainConfig of a parsed `train` (or `demo`) command line."""
    from kgg.job.config import resolve

    options = {name: getattr(args, name, None) for name in TRAIN_OPTIONS}
    return resolve(args.recipe, data=args.data, out=args.out, **options)


def _user_error(error: Exception) -> int:
    """Problems the user fixes (paths, options, data, models): one line, not a traceback."""
    message = " ".join(str(error).split())
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _train(args: argparse.Namespace) -> int:
    from kgg.common.storage import StorageError
    from kgg.job import trial
    from kgg.job.runstate import SimulatedInterruption, Terminated, terminate_on_sigterm
    from kgg.job.train import train

    try:
        # Under Vertex AI the run's folder is Vertex's (a sweep's trial has its own).
        vertex = trial.from_environment()
        args.out = args.out or (vertex.out if vertex else None)
        if not args.out:
            raise ValueError("--out is required (Vertex AI jobs get it from AIP_MODEL_DIR)")
        config = config_from_args(args)
    except ValueError as error:
        return _user_error(error)
    try:
        with terminate_on_sigterm():
            metrics = train(config, restart=args.restart)
        if vertex is not None:
            # The tuner's measurement: the headline micro-F1 (the held-out split's if any).
            trial.MetricReporter.from_environment().report(metrics[METRIC_ID])
    except (SimulatedInterruption, Terminated) as stop:
        print(f"interrupted: {stop}; run the same command again to resume", file=sys.stderr)
        return EXIT_RETRY
    except (StorageError, OSError, ValueError) as error:  # DataError, RunMismatch: ValueErrors
        return _user_error(error)
    return 0


def _predict(args: argparse.Namespace) -> int:
    from kgg.common.storage import StorageError
    from kgg.job.predict import predict

    try:
        predict(
            args.model, args.images, args.out, cache_dir=args.cache_dir or str(DEFAULT_CACHE_DIR)
        )
    except (StorageError, OSError, ValueError) as error:  # DataError, ModelError: ValueErrors
        return _user_error(error)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """`train` and `predict`."""
    train = subparsers.add_parser(
        "train", help="train and evaluate; resumable: rerun the same command after a kill"
    )
    train.add_argument("--data", required=True, help="folder or gs:// prefix with train/ [test/]")
    train.add_argument(
        "--out", help="results folder or gs:// prefix (one per run; under Vertex AI: its own)"
    )
    _add_train_options(train)
    train.set_defaults(func=run)

    predict = subparsers.add_parser("predict", help="predict species for new images")
    predict.add_argument(
        "--model", required=True, help="model.keras, or the run folder / gs:// prefix holding it"
    )
    predict.add_argument("--images", required=True, help="image folder or gs:// prefix")
    predict.add_argument(
        "--out", required=True, help="CSV file, or a folder / gs:// prefix for predictions.csv"
    )
    predict.add_argument("--cache-dir", help="local cache for downloads")
    predict.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return {"train": _train, "predict": _predict}[args.command](args)


def run_job(argv: Sequence[str]) -> int:
    """The job's commands alone, parsed as `kgg` parses them: what `demo` rehearses."""
    parser = argparse.ArgumentParser(prog=CLI_NAME)
    register(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(argv))
