"""`python -m workload ...`: see workload/cli.py."""

import os
import sys
import traceback

from workload.cli import main

EXIT_CRASH = 1  # a bug or an unforeseen failure: its traceback is on stderr

if __name__ == "__main__":
    try:
        code = main()
    except Exception:
        # TensorFlow's native threads can keep a crashed process from exiting (a real boot's
        # job hung 15 minutes after its traceback, and the VM stayed up for it): report, leave.
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_CRASH)
    sys.exit(code)
