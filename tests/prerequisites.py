"""Tests that need a real tool skip where it is missing, except where CI requires them."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def unavailable(message: str, required_env: str) -> NoReturn:
    """Skips the test, or fails it when `required_env` is 1 (.ci/run sets it: CI must run it)."""
    if os.environ.get(required_env) == "1":
        pytest.fail(f"{message} ({required_env}=1)", pytrace=False)
    pytest.skip(message)
