"""The one base of the errors a user fixes: `kgg`'s main prints its message as one line on stderr
(`error: ...`, no traceback) and exits with its exit code."""

from __future__ import annotations

from kgg.common.contract import EXIT_USAGE


class UserError(Exception):
    """A problem the user fixes (a flag, the stack, the bucket, a tool to install), named with its
    fix. `exit_code` is EXIT_USAGE (2), or EXIT_RETRY (75) where the same command, run again
    later, succeeds."""

    exit_code: int = EXIT_USAGE
