"""`kgg`'s commands, one module per command group, each with `register(subparsers)` (its parsers,
their `func` set to its `run`) and `run(args)`. kgg/cli/main.py lists them; a new command is a new
module and one line there.

Importing them never imports TensorFlow or the Google clients: each command imports what it
needs when it runs, so `kgg --help` is quick and works without the ml extra."""
