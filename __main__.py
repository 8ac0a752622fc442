"""keras-gpu-gcp: a GPU JupyterLab and a training run on GCP. Wiring only; see infra/."""

import pulumi

from kgg.infra.component import GpuNotebook
from kgg.infra.pulumi_config import load_notify_webhook, load_settings

settings, jupyter_password = load_settings()
notebook = GpuNotebook(
    "keras-gpu",
    settings,
    jupyter_password=jupyter_password,
    stack=pulumi.get_stack(),
    notify_webhook=load_notify_webhook(),
)

for output_name, value in notebook.stack_outputs.items():
    pulumi.export(output_name, value)
