"""Names the job, the laptop commands, the VM agent and infra agree on (docs/ARCHITECTURE.md,
"Bucket layout", "VM metadata"): object names, and what the laptop reads from GCE rather than from
the bucket. One definition for the writer and every reader."""

# In a data folder: written last by `kgg upload`, so its presence says the data is complete.
MANIFEST_NAME = "_upload_manifest.json"
# In a run folder (--out): the job's progress, read by `kgg status` and `runs`.
PROGRESS_FILE = "progress.json"
# In a run folder: resume checkpoints, removed when the run is done; `pull` leaves them behind.
BACKUP_DIR = "backup"
# In a run folder: TensorBoard event files, one folder per phase (head, finetune, guide), each
# with train/ and validation/; a resumed run adds files, never replaces them.
TENSORBOARD_DIR = "tensorboard"

# Guest attribute the VM agent writes (the metadata server) and `status` reads (the Compute API):
# the notebook certificate's SHA-256. Only a process on the VM can write guest attributes; a
# bucket writer cannot, so this, not the bucket's status document, is what `status` vouches for.
TLS_FINGERPRINT_ATTRIBUTE = "kgg/tls-sha256"
# Instance metadata infra sets and `status` reads from the group's template (GCE, not the bucket):
# with the template's static IP, the notebook's address.
NOTEBOOK_PORT_KEY = "kgg-notebook-port"
NOTEBOOK_ACCESS_KEY = "kgg-notebook-access"
