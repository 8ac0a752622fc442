"""The training job: what `kgg train|predict` runs, on the VM or a laptop.

It imports kgg.common.storage and nothing of kgg.cli; TensorFlow is imported inside the
functions that need it, so its command-line parser loads without it."""
