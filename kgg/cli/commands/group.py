"""`kgg start` and `kgg stop`: the VM's group resized to 1 or 0 (GCE makes or deletes the VM)."""

from __future__ import annotations

import argparse

from kgg.cli.capacity import zone_list
from kgg.cli.stack import add_group_command
from kgg.cli.vm import group_and_compute, print_group, read_group


def register(subparsers: argparse._SubParsersAction) -> None:
    add_group_command(
        subparsers,
        "start",
        run,
        "start the VM (in any zone with capacity; GCE keeps trying until it exists)",
        "Resizes the VM's group to 1. The group creates the VM in whichever of its zones has "
        "capacity and retries by itself until it exists; training resumes from the bucket.",
    )
    add_group_command(
        subparsers,
        "stop",
        run,
        "stop the VM now (no VM charges; the workspace and runs stay in the bucket)",
        "Resizes the VM's group to 0: the group deletes the VM and nothing recreates it until "
        "`start`. The static IP and the bucket remain (and cost a little).",
    )


def run(args: argparse.Namespace) -> int:
    return {"start": _start, "stop": _stop}[args.command](args)


def _start(args: argparse.Namespace) -> int:
    compute, group = group_and_compute(args.group)
    state = read_group(compute, group)
    where = zone_list(state.region, state.zones)
    if state.target_size >= 1:
        print(f"already started: the group {group.name} keeps one VM in {where}")
    else:
        compute.resize(group, 1)
        print(
            f"started: the group {group.name} creates the VM in whichever of {where} has "
            "capacity, and keeps trying until it exists (also with the laptop closed)."
        )
        state = read_group(compute, group)
    print_group(state)
    print("follow it: kgg status --watch")
    return 0


def _stop(args: argparse.Namespace) -> int:
    compute, group = group_and_compute(args.group)
    state = read_group(compute, group)
    if state.target_size == 0:
        print(f"already stopped: the group {group.name} has no VM to keep")
    else:
        compute.resize(group, 0)
        print(
            f"stopping: the group {group.name} deletes its VM (the VM saves its workspace to the "
            "bucket as it shuts down; training resumes from its last backup). No VM charges once "
            "it is gone; the static IP and the bucket still cost a little (README)."
        )
        state = read_group(compute, group)
    for vm in state.outside:
        # Out of the group's hands (abandoned, or made by hand): only a delete stops it.
        compute.delete_instance(group.project, vm.zone, vm.name)
        print(
            f"deleted {vm.name} in {vm.zone}: it had the stack's labels but was outside the "
            f"group {group.name}, so neither idle shutdown nor a resize could stop it"
        )
    if state.outside:
        state = read_group(compute, group)
    print_group(state)
    print("start it again with: kgg start")
    return 0
