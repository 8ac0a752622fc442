"""`kgg runs` and `kgg pull`: the runs in the bucket and their files (kgg/cli/results.py)."""

from __future__ import annotations

import argparse

from kgg.cli import results, status
from kgg.cli.stack import add_bucket_option, resolve_bucket, stack_outputs
from kgg.common import storage
from kgg.common.contract import STATUS_OBJECT


def register(subparsers: argparse._SubParsersAction) -> None:
    pull = subparsers.add_parser(
        "pull",
        help="download a run's results (model, metrics, plots, submission.csv)",
        description="Downloads gs://BUCKET/runs/RUN/ to DIR/RUN, skipping files already there.",
    )
    pull.add_argument("run", metavar="RUN", help="run id (see `runs`), or `latest`")
    pull.add_argument(
        "--to",
        metavar="DIR",
        default=results.RUNS_FOLDER,
        help=f"the run goes to DIR/RUN (default {results.RUNS_FOLDER})",
    )
    add_bucket_option(pull)
    pull.add_argument("--workers", type=int, default=8, help="parallel downloads (default 8)")
    pull.add_argument("--quiet", action="store_true", help="no progress bar")
    pull.add_argument(
        "--max-gb",
        type=float,
        default=20.0,
        help="download at most this much (default 20 GB; a run writes a few hundred MB)",
    )
    pull.add_argument(
        "--all-trials", action="store_true", help="a sweep: every trial (default: the best)"
    )
    pull.set_defaults(func=run)

    runs = subparsers.add_parser(
        "runs",
        help="list the training runs with their metrics",
        description="Lists gs://BUCKET/runs/* with state, micro-F1 and accuracy.",
    )
    add_bucket_option(runs)
    runs.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return {"pull": _pull, "runs": _runs}[args.command](args)


def _pull(args: argparse.Namespace) -> int:
    bucket = resolve_bucket(args.bucket)
    if not args.all_trials:  # a sweep: its best trial only
        from kgg.cli.vertex_runs import pull_best

        best = pull_best(bucket, args.run, args.to, args.workers, not args.quiet,
                         int(args.max_gb * 10**9), results.runs_listing(bucket))  # fmt: skip
        if best is not None:
            print(results.render_pull(*best))
            return 0
    run_id, target, stats = results.pull_run(
        bucket,
        args.run,
        args.to,
        workers=args.workers,
        progress=not args.quiet,
        max_bytes=int(args.max_gb * 10**9),
    )
    print(results.render_pull(run_id, target, stats))
    return 0


def _runs(args: argparse.Namespace) -> int:
    bucket = resolve_bucket(args.bucket)
    startup = status.parse_startup(storage.read_limited(f"gs://{bucket}/{STATUS_OBJECT}"))
    current = startup.run_id if startup else None
    costs = results.run_costs(bucket)
    print(results.render_runs(results.list_runs(bucket), bucket, current, costs))
    if args.bucket is None:  # the stack's bucket: its Vertex AI jobs too
        from kgg.cli import vertex_runs

        vertex_runs.print_section(stack_outputs)
    return 0
