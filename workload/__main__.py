"""`python -m workload ...`: see workload/cli.py."""

import sys

from workload.cli import main

if __name__ == "__main__":
    sys.exit(main())
