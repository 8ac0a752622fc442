"""The VM stopping itself, for idleness or when training ended. In a managed instance group it
never powers off: a stopped VM is a failed one to its group, which creates it again at once
(a loop that keeps paying). It asks the group to resize to 0, which deletes it, after a last
workspace sync; a VM made on its own powers off."""

from __future__ import annotations

import time

from startup.vm.agent import Agent
from startup.vm.cloud import CloudError, resize_group
from startup.vm.workspace import FINAL_SYNC_SECONDS, workspace_command

RESIZE_TRIES = 3
RESIZE_BACKOFF_SECONDS = 10.0


def stop_vm(
    agent: Agent, detail: str, *, idle: bool = True, backoff: float = RESIZE_BACKOFF_SECONDS
) -> bool:
    """True when the VM is on its way out; False when its group refused (it keeps running, and
    the status says so: the user can `python -m workload stop`). `idle` sets the phase to idle;
    a VM stopping after its training keeps the phase the run ended with."""
    if agent.instance.workspace_url:
        sync = agent.system.run(
            workspace_command(agent.paths, "sync", "--deadline", str(FINAL_SYNC_SECONDS)),
            check=False,
            timeout=FINAL_SYNC_SECONDS + 10,
        )
        if sync.returncode != 0:
            agent.log.warning("the last workspace sync failed: %s", sync.stderr.strip()[-300:])
    agent.status.update(*(["phase=idle"] if idle else []), f"detail.idle={detail}")
    if not agent.instance.group:
        agent.log.info("%s: powering off", detail)
        agent.system.power_off(f"keras-gpu-gcp: {detail}")
        return True
    error: CloudError | None = None
    for attempt in range(RESIZE_TRIES):
        try:
            resize_group(agent.endpoints, agent.metadata, agent.instance, 0)
            agent.log.info("%s: the group %s deletes this VM", detail, agent.instance.group)
            return True
        except CloudError as failure:
            error = failure
            agent.log.warning("attempt %d of %d: %s", attempt + 1, RESIZE_TRIES, failure)
            if attempt + 1 < RESIZE_TRIES:
                time.sleep(backoff * (attempt + 1))
    agent.status.update(
        "error.step=idle-stop",
        f"error.message=the VM could not stop itself: {error}",
        "error.hint=it keeps running and paying: stop it with python -m workload stop; "
        "check the VM's grant on its group (docs/ARCHITECTURE.md)",
    )
    return False
