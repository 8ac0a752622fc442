"""The training job: what `python -m workload train|predict` runs, on the VM or a laptop.

It imports workload.storage and nothing of workload.ops; TensorFlow is imported inside the
functions that need it, so its command-line parser loads without it."""
