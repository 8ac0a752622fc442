"""Every name two rooms must agree on, spelled once (docs/CONTRACTS.md, "Bucket layout" and
"VM metadata"): the bucket's object names, the instance metadata keys, the systemd units, the VM's
paths, the exit codes one room reads from another, the CLI's name, and the checks of the values
they carry. tests/common/test_contract.py fails when one of these literals is spelled elsewhere.

Stdlib only and no import from the project: the startup script can carry it verbatim to the bare
image, as it carries documents.py.
"""

from __future__ import annotations

import re

# The console script, and the package the VM runs as `python -m kgg`.
CLI_NAME = "kgg"

# --- The bucket: what the VM writes and the laptop reads -------------------------------------
# The VM's status document (kgg/common/documents.py), and its cost ledger (kgg/agent/cost.py).
STATUS_OBJECT = "status/startup.json"
COST_OBJECT = "status/cost.json"
# The startup log: bootstrap uploads it at each step's end, then the agent's log sync.
STARTUP_LOG_OBJECT = "logs/startup.log"
# One folder per run, runs/<run-id>/ (a sweep's trials one level deeper).
RUNS_PREFIX = "runs/"
# The notebook user's workspace, mirrored by the VM.
WORKSPACE_PREFIX = "workspace/"
# The code archive infra uploads and the VM unpacks (code/workload-<sha>.tar.gz).
CODE_PREFIX = "code/"

# In a data folder: written last by `kgg upload`, so its presence says the data is complete.
MANIFEST_NAME = "_upload_manifest.json"
# In a run folder (--out): the job's progress, read by `kgg status` and `runs`.
PROGRESS_FILE = "progress.json"
# In a run folder: the job's headline metrics, read by `kgg runs`, the agent's notification, demo.
METRICS_FILE = "metrics.json"
# The headline micro-F1 (the held-out split's when there is one): its key in metrics.json and
# progress.json, the Keras metric's name, and the tag the job reports to Vertex's tuner, which the
# sweep's study maximises (kgg/job/trial.py, kgg/cli/vertex_spec.py).
METRIC_ID = "micro_f1"
# In a run folder: the training log the VM's log sync uploads and `kgg logs` reads.
TRAIN_LOG_FILE = "train.log"
# In a run folder: resume checkpoints, removed when the run is done; `pull` leaves them behind.
BACKUP_DIR = "backup"
# In a run folder: TensorBoard event files, one folder per phase (head, finetune, guide), each
# with train/ and validation/; a resumed run adds files, never replaces them.
TENSORBOARD_DIR = "tensorboard"


def run_folder(run_id: str) -> str:
    """runs/<run-id>/: the object prefix of one run's files."""
    return f"{RUNS_PREFIX}{run_id}/"


# --- Instance metadata infra sets and the VM reads (bootstrap, the agent) or the laptop reads
# from the group's template -------------------------------------------------------------------
BUCKET_KEY = "kgg-bucket"
RUN_ID_KEY = "kgg-run-id"
WORKLOAD_OBJECT_KEY = "kgg-workload-object"
WORKLOAD_SHA256_KEY = "kgg-workload-sha256"
# The secret (`projects/P/secrets/S`) holding the Jupyter password hash; the hash is never metadata.
PASSWORD_SECRET_KEY = "kgg-jupyter-password-secret"
# The secret holding the notification webhook's URL (only with notifyWebhook set).
NOTIFY_SECRET_KEY = "kgg-notify-webhook-secret"
# The VM's own group: the VM stops itself by resizing it to 0.
GROUP_NAME_KEY = "kgg-instance-group"
GROUP_REGION_KEY = "kgg-instance-group-region"
# The bucket prefix the VM mirrors its notebook workspace to (WORKSPACE_PREFIX).
WORKSPACE_PREFIX_KEY = "kgg-workspace-prefix"
# The stop workflow (`projects/P/locations/R/workflows/W`).
STOP_WORKFLOW_KEY = "kgg-stop-workflow"
# With the template's static IP, the notebook's address (`kgg status` reads them from GCE).
NOTEBOOK_PORT_KEY = "kgg-notebook-port"
NOTEBOOK_ACCESS_KEY = "kgg-notebook-access"
# Guest attribute the VM agent writes (the metadata server) and `status` reads (the Compute API):
# the notebook certificate's SHA-256. Only a process on the VM can write guest attributes; a
# bucket writer cannot, so this, not the bucket's status document, is what `status` vouches for.
TLS_FINGERPRINT_ATTRIBUTE = "kgg/tls-sha256"

# --- systemd units the agent installs and `kgg status` reports ---------------------------------
JUPYTER_UNIT = "kgg-jupyter.service"
PASSWORD_REFRESH_UNIT = "kgg-password-refresh.service"
PASSWORD_REFRESH_TIMER = "kgg-password-refresh.timer"
WORKSPACE_SYNC_UNIT = "kgg-workspace-sync.service"
WORKSPACE_SYNC_TIMER = "kgg-workspace-sync.timer"
WORKSPACE_FINAL_UNIT = "kgg-workspace-final.service"
TRAINING_UNIT = "kgg-training.service"
IDLE_UNIT = "kgg-idle-check.service"
IDLE_TIMER = "kgg-idle-check.timer"
LOG_SYNC_UNIT = "kgg-log-sync.service"

# --- Paths on the VM (the startup script, bootstrap and the agent) -----------------------------
STATE_DIR = "/var/lib/keras-gpu-gcp"  # markers, logs, the status copy: survives reboots
CONF_DIR = "/etc/keras-gpu-gcp"  # settings.json the script writes, Jupyter's config
INSTALL_DIR = "/opt/keras-gpu-gcp"
APP_DIR = f"{INSTALL_DIR}/app"  # the code archive, unpacked
VENV_DIR = f"{INSTALL_DIR}/venv"
BOOTSTRAP_PY = f"{INSTALL_DIR}/bootstrap/bootstrap.py"
RUNTIME_DIR = "/run/keras-gpu-gcp"  # emptied at each boot

# --- A Vertex AI job's container: what kgg/cli/vertex_jobs.py sets in its environment and
# bootstrap.py's `vertex` reads: the VM's pinned uv wheel and the CPython range of uv.lock's wheels
# (kgg/startup/render.py holds the values, the startup script gets them rendered).
UV_VERSION_ENV = "KGG_UV_VERSION"
UV_WHEEL_URL_ENV = "KGG_UV_WHEEL_URL"
UV_WHEEL_SHA256_ENV = "KGG_UV_WHEEL_SHA256"
PYTHON_MIN_ENV = "KGG_PYTHON_MIN"
PYTHON_MAX_ENV = "KGG_PYTHON_MAX"
MANAGED_PYTHON_ENV = "KGG_MANAGED_PYTHON"
# What Vertex sets from the job's baseOutputDirectory: <base>/model/ (a trial's under
# <base>/<trial-id>/). The run's folder is the one above it (kgg/job/trial.py).
VERTEX_MODEL_DIR_ENV = "AIP_MODEL_DIR"
# Where Vertex mounts the bucket in the container (Cloud Storage FUSE, read-write).
VERTEX_FUSE_ROOT = "/gcs/"


def vertex_run_folder(model_dir: str) -> str | None:
    """The run's folder (the job's --out) of an AIP_MODEL_DIR `<folder>/model/`; None for a
    value that does not end in /model."""
    trimmed = model_dir.rstrip("/")
    return trimmed.removesuffix("/model") if trimmed.endswith("/model") else None


# --- Exit codes ------------------------------------------------------------------------------
EXIT_USAGE = 2  # bad data, path, option or value: the user fixes it, then runs the command again
# EX_TEMPFAIL: interrupted (SIGTERM, a simulated kill, no capacity yet); the same command resumes.
# The agent reads it from the job to restart it.
EXIT_RETRY = 75

# --- The values those names carry ------------------------------------------------------------
_RUN_ID = re.compile(r"[A-Za-z0-9._-]+")
_SECRET_NAME = re.compile(r"projects/[A-Za-z0-9_-]+/secrets/[A-Za-z0-9_-]+")


class ContractError(ValueError):
    """A value one room received from another is not what the contract says: one line naming the
    value, what it should be, and (when the caller knows it) the fix."""


def _refuse(source: str, value: str, expected: str, fix: str) -> ContractError:
    # repr() escapes control characters, so the line is safe on a terminal.
    named = f"{source} {value!r}" if source else repr(value)
    return ContractError(f"{named} is not {expected}" + (f"; {fix}" if fix else ""))


def check_run_id(value: str, source: str = RUN_ID_KEY, fix: str = "") -> str:
    """`value` when it is a run id (a folder name under runs/), else ContractError."""
    if not isinstance(value, str) or not _RUN_ID.fullmatch(value):
        raise _refuse(source, value, "a run id (letters, digits, . _ -)", fix)
    return value


def check_secret_name(value: str, source: str = PASSWORD_SECRET_KEY, fix: str = "") -> str:
    """`value` when it is a Secret Manager name (projects/P/secrets/S), else ContractError."""
    if not isinstance(value, str) or not _SECRET_NAME.fullmatch(value):
        raise _refuse(source, value, "a secret name (projects/P/secrets/S)", fix)
    return value
