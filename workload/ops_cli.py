"""Laptop commands (upload, status, pull, runs): registered on the workload CLI."""

from __future__ import annotations

import argparse


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Adds the laptop commands to the `python -m workload` parser."""
