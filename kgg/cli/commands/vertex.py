"""`kgg submit`, `kgg sweep` and `kgg cancel`: a training run or a sweep as a Vertex AI job
(kgg/cli/vertex_jobs.py builds it), or a sweep's trials here (`sweep --local`). Each prints its
cost estimate on stderr first (kgg/cli/vertex_cost.py); `--dry-run` prints the body and sends
nothing."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from kgg.cli import local_sweep as local
from kgg.cli import vertex_spec
from kgg.cli.stack import stack_outputs
from kgg.cli.vertex_api import JOB_NAME, TUNING_JOBS, Vertex
from kgg.cli.vertex_jobs import (
    DEFAULT_GPU,
    FLEX_START_DEFAULT_GPU,
    MANUAL_STACK,
    Job,
    add_train_options,
    code_archive,
    ensure_uploaded,
    new_run_id,
    resolve_where,
    submit_job,
    sweep_job,
    train_args,
    train_parser,
)
from kgg.cli.vertex_spec import SpecError


def local_sweep(args: argparse.Namespace) -> int:
    """`sweep --local`: the trials here, one after another, under Vertex's trial contract, on
    --data, or by default on the demo's synthetic data in an emulator bucket (as `kgg demo`)."""
    from kgg.cli import sweep_params

    if args.algorithm not in ("random", "bayesian"):
        raise SpecError(
            f"sweep --local searches at random; --algorithm {args.algorithm} is Vertex's"
        )
    fixed = train_args(args)
    params = sweep_params.parse_params(args.param, sweep_params.option_kinds(train_parser()))
    sweep_params.fixed_conflicts(params, fixed)
    study = vertex_spec.Study(params, args.trials, 1, args.max_failed, "random").body()
    run_id = args.run_id or new_run_id("vs")
    if not vertex_spec.RUN_ID.match(run_id):
        raise SpecError(f"--run-id {run_id!r} must be lowercase letters, digits, - or _")
    here = Path(args.local_out).expanduser().absolute() / run_id
    if args.data:
        print(f"sweep {run_id}: {args.trials} trials here, one after another, in {here}/")
        trials = local.run_trials(study, ["train", "--data", args.data, *fixed], here,
                                  args.trials, seed=args.seed_trials)  # fmt: skip
        return _best(run_id, trials)
    return _demo_sweep(args, study, run_id, here, fixed)


def _demo_sweep(
    args: argparse.Namespace, study: dict, run_id: str, here: Path, fixed: list[str]
) -> int:
    """The trials on the demo's data, each writing gs://kgg-demo/runs/SWEEP/N/ as the VM's
    account (a Vertex trial's layout), then copied to `here` before the emulator goes."""
    import tempfile

    from kgg.cli import demo
    from kgg.common import storage
    from kgg.common.contract import run_folder
    from kgg.common.emulator import acting_as

    with tempfile.TemporaryDirectory(prefix="kgg-sweep-") as scratch:
        scratch_dir = Path(scratch)
        with demo.demo_bucket(scratch_dir) as bucket:
            base = f"gs://{demo.DEMO_BUCKET}/{run_folder(run_id)}".rstrip("/")
            print(f"sweep {run_id}: {args.trials} trials here, one after another, in {base}/ "
                  "(demo data and options; yours after them win)")  # fmt: skip
            job = ["train", "--data", bucket.data, *demo.DEMO_OPTIONS,
                   "--cache-dir", str(scratch_dir / "cache"), *fixed]  # fmt: skip
            with acting_as(bucket.vm):
                trials = local.run_trials(study, job, base, args.trials, seed=args.seed_trials,
                                          metrics=scratch_dir / "hypertune")  # fmt: skip
            with acting_as(bucket.laptop):
                storage.download_tree(base, str(here), progress=False)
    print(f"copied the trials' results to {here}/")
    moved = [replace(t, out=str(here / t.trial_id)) for t in trials]
    return _best(run_id, moved)


def _best(run_id: str, trials: list[local.LocalTrial]) -> int:
    winner = local.best(trials)
    if winner is None:
        print(f"no trial of {run_id} reported a score: see the trials' output above")
        return 1
    shown = " ".join(local.arguments(winner.parameters))
    print(f"best: trial {winner.trial_id}, micro-F1 {winner.score:.4f} ({shown}) in {winner.out}")
    return 0


def _create(args: argparse.Namespace, build: Callable[..., Job]) -> int:
    if getattr(args, "local", False):
        return local_sweep(args)
    where = resolve_where(args, stack_outputs)
    code = code_archive()
    job = build(args, where, code)
    # On stderr: with --dry-run, stdout holds only the body (it is piped into other tools).
    # Imported here: its prices are in kgg/infra, which the VM's and a job's archive leave out.
    from kgg.cli import vertex_cost

    print(vertex_cost.estimate(job.body, where.target.region), file=sys.stderr)
    if args.dry_run:
        print(json.dumps(job.body, indent=2))
        return 0
    vertex = Vertex.from_environment(where.target.region)
    if ensure_uploaded(where.target.bucket, code):
        print(f"uploaded the code archive gs://{where.target.bucket}/{code.object_name}")
    created = vertex.create(job.parent, job.collection, job.body)
    name = str(created.get("name", ""))
    kind = "sweep" if job.collection == TUNING_JOBS else "run"
    print(f"submitted {kind} {job.run_id}: {name} ({created.get('state', '?')})")
    print(f"  results: {vertex_spec.output_prefix(where.target.bucket, job.run_id)}")
    print(f"  follow it: kgg runs   stop it: kgg cancel {name}")
    return 0


def cancel(args: argparse.Namespace) -> int:
    match = JOB_NAME.match(args.job.strip())
    if not match:
        raise SpecError(
            f"JOB {args.job!r} is not a job name like projects/PROJECT/locations/REGION/"
            "customJobs/ID (what `kgg submit` or `kgg sweep` printed)"
        )
    Vertex.from_environment(match["region"]).cancel(args.job.strip())
    print(f"cancelling {args.job.strip()}: Vertex stops it within minutes (see `kgg runs`)")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.command == "cancel":
        return cancel(args)
    return _create(args, submit_job if args.command == "submit" else sweep_job)


def _add_target(parser: argparse.ArgumentParser) -> None:
    where = parser.add_argument_group("where (default: the Pulumi stack's outputs)")
    where.add_argument("--project", help="GCP project id (stack output project)")
    where.add_argument("--region", help="Vertex AI region (stack output region)")
    where.add_argument("--bucket", help="the stack's bucket (stack output bucketName)")
    where.add_argument(
        "--service-account",
        help="the jobs' identity; you need act-as on it (stack output jobsServiceAccount)",
    )
    where.add_argument("--stack", help=f"the stack label (default: the stack's; {MANUAL_STACK})")
    where.add_argument("--data", help="gs:// data prefix (default gs://BUCKET/<dataPath>)")
    where.add_argument("--run-id", help="the run's id (default vx-/vs-<UTC time>-<4 hex>)")


def _add_machine(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("machine and scheduling")
    group.add_argument(
        "--gpu-type",
        help=f"default {DEFAULT_GPU} ({FLEX_START_DEFAULT_GPU} with --scheduling flex-start, "
        "which takes no T4)",
    )
    group.add_argument("--gpu-count", type=int, default=1, help="GPUs on the one machine")
    group.add_argument("--machine-type", help="default: the catalogue's for the GPU")
    group.add_argument(
        "--scheduling", choices=tuple(vertex_spec.STRATEGIES), default="standard",
        help="standard (default), spot (cheaper, may be preempted), flex-start (queued for "
        "capacity, up to --max-wait)",
    )  # fmt: skip
    group.add_argument("--max-wait", help="flex-start's longest wait, like 2h (0: forever)")
    group.add_argument("--timeout", default="1d", help="the run's time limit (default 1d)")
    group.add_argument(
        "--dry-run", action="store_true", help="print the request's JSON body, send nothing"
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `submit`, `sweep` and `cancel` to the `kgg` parser."""
    submit = subparsers.add_parser(
        "submit",
        help="one training run as a Vertex AI custom job (no VM needed)",
        description="Runs `kgg train` with the given train options as a Vertex AI custom job: "
        "results in gs://BUCKET/runs/RUN/, as a VM run's.",
    )
    _add_target(submit)
    _add_machine(submit)
    add_train_options(submit)
    submit.set_defaults(func=run)

    sweep = subparsers.add_parser(
        "sweep",
        help="a hyperparameter sweep as a Vertex AI tuning job (one run per trial)",
        description="Searches --param ranges with Vertex AI's tuner, maximising the held-out "
        "micro-F1; each trial's results in gs://BUCKET/runs/SWEEP/TRIAL/.",
    )
    sweep.add_argument("--trials", type=int, required=True, help="how many trials in all")
    sweep.add_argument("--parallel", type=int, default=1, help="trials at a time (default 1)")
    sweep.add_argument(
        "--param", action="append", default=[], metavar="NAME=SPEC",
        help="a train option to search: finetune-lr=log:1e-5..1e-2, unfreeze-blocks=1..3, "
        "recipe=cat:fast,guide (README.md, 'Sweep parameters')",
    )  # fmt: skip
    sweep.add_argument(
        "--algorithm", choices=tuple(vertex_spec.ALGORITHMS), default="bayesian",
        help="bayesian (default), random or grid",
    )  # fmt: skip
    sweep.add_argument("--max-failed", type=int, help="failed trials before the sweep stops")
    local = sweep.add_argument_group("here instead of Vertex AI")
    local.add_argument(
        "--local", action="store_true",
        help="run the trials on this machine, one after another (random search), on --data or by "
        "default on the demo's synthetic data in an emulator bucket",
    )  # fmt: skip
    local.add_argument(
        "--local-out", default="runs", metavar="DIR", help="trials in DIR/SWEEP/N (default runs)"
    )
    local.add_argument("--seed-trials", type=int, help="seed of the random draws (repeatable)")
    _add_target(sweep)
    _add_machine(sweep)
    add_train_options(sweep)
    sweep.set_defaults(func=run)

    cancel_parser = subparsers.add_parser(
        "cancel",
        help="cancel a Vertex AI run or sweep",
        description="Cancels the custom job or tuning job JOB (its full name, as printed).",
    )
    cancel_parser.add_argument("job", metavar="JOB", help="projects/.../customJobs/ID")
    cancel_parser.set_defaults(func=run)
