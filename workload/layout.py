"""Object names the job, the laptop commands and the VM agent agree on (docs/ARCHITECTURE.md,
"Bucket layout"): one definition for the writer and every reader."""

# In a data folder: written last by `workload upload`, so its presence says the data is complete.
MANIFEST_NAME = "_upload_manifest.json"
# In a run folder (--out): the job's progress, read by `workload status` and `runs`.
PROGRESS_FILE = "progress.json"
# In a run folder: resume checkpoints, removed when the run is done; `pull` leaves them behind.
BACKUP_DIR = "backup"
# In a run folder: TensorBoard event files, one folder per phase (head, finetune, guide), each
# with train/ and validation/; a resumed run adds files, never replaces them.
TENSORBOARD_DIR = "tensorboard"
