"""`python -m kgg ...`, as the VM runs it: the same as the `kgg` command (kgg/cli/main.py)."""

from kgg.cli.main import main

if __name__ == "__main__":
    main()
