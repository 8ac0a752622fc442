"""`kgg tensorboard`: TensorBoard on a run's event files mirrored from the bucket
(kgg/cli/tensorboard.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from kgg.cli import tensorboard
from kgg.cli.stack import add_bucket_option, resolve_bucket


def register(subparsers: argparse._SubParsersAction) -> None:
    board = subparsers.add_parser(
        "tensorboard",
        help="TensorBoard on a run's event files, mirrored from the bucket",
        description=(
            "Mirrors gs://BUCKET/runs/RUN/tensorboard/ (or every run's, for `all`) into a local "
            "cache, copying only what changed, and runs TensorBoard on it at "
            "http://localhost:PORT/, mirroring again every --refresh seconds. Needs the "
            "tensorboard package: `uv sync --group tensorboard`."
        ),
    )
    board.add_argument(
        "run", metavar="RUN", nargs="?", default="latest", help="run id, `latest` or `all`"
    )
    add_bucket_option(board)
    board.add_argument(
        "--cache",
        metavar="DIR",
        help="the local mirror (default ~/.cache/keras-gpu-gcp/tensorboard)",
    )
    board.add_argument("--port", type=int, default=6006, help="TensorBoard's port (default 6006)")
    board.add_argument(
        "--refresh",
        type=float,
        default=60.0,
        help="seconds between mirrors while TensorBoard runs (default 60; 0 = once)",
    )
    board.add_argument(
        "--no-serve", action="store_true", help="only mirror the files and print where they are"
    )
    board.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    bucket = resolve_bucket(args.bucket)
    cache = Path(args.cache) if args.cache else tensorboard.default_cache()
    if args.no_serve:
        print(tensorboard.render_mirror(tensorboard.mirror(bucket, args.run, cache)))
        return 0
    tensorboard.require_tensorboard()  # before the download, not after it
    return tensorboard.serve(bucket, args.run, cache, args.port, args.refresh)
