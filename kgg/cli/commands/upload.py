"""`kgg upload`: a local train/<class>/ folder to the bucket (kgg/cli/upload.py)."""

from __future__ import annotations

import argparse

from kgg.cli import upload
from kgg.cli.stack import add_bucket_option, resolve_bucket, stack_data_path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "upload",
        help="upload a train/<class>/*.png folder to the bucket (resumable)",
        description=(
            "Uploads LOCAL_DIR/train/<class>/* and LOCAL_DIR/test/* to gs://BUCKET/PREFIX. Files "
            "already there with the same MD5 are skipped, so an interrupted upload is simply run "
            "again; the manifest that tells the VM the data is complete is written last."
        ),
    )
    parser.add_argument("local_dir", metavar="LOCAL_DIR", help="folder holding train/<class>/")
    add_bucket_option(parser)
    parser.add_argument(
        "--prefix",
        help=(
            "prefix in the bucket; must match the stack's dataPath (default: the stack's dataPath "
            f"when --bucket is not given, else {upload.DEFAULT_PREFIX})"
        ),
    )
    parser.add_argument("--workers", type=int, default=16, help="parallel uploads (default 16)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--delete-extra",
        action="store_true",
        help="delete objects under the prefix that are not in LOCAL_DIR (else only reported)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    bucket = resolve_bucket(args.bucket)
    # With the bucket from the stack, the prefix must be the stack's dataPath too, or the VM
    # waits for data that went elsewhere.
    prefix = args.prefix or (None if args.bucket else stack_data_path()) or upload.DEFAULT_PREFIX
    report = upload.upload_dataset(
        args.local_dir,
        bucket,
        prefix=prefix,
        workers=args.workers,
        progress=not args.quiet,
        delete_extra=args.delete_extra,
    )
    print(upload.format_report(report))
    return 0
