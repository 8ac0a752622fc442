"""The VM stopping itself, for idleness or when training ended. In a managed instance group it
never powers off: a stopped VM is a failed one to its group, which creates it again at once
(a loop that keeps paying). After a last workspace sync it runs the stack's stop workflow, which
resizes the group to 0 (the group deletes the VM) as an account of its own: the VM's account may
only start that workflow. A VM made on its own powers off.

`check_stop_path` runs the workflow's check mode at boot, so a grant that does not work fails
loudly then, not silently at the first idle hour."""

from __future__ import annotations

import time

from kgg.agent.agent import Agent, StepFailed
from kgg.agent.cloud import run_stop_workflow
from kgg.agent.workspace import FINAL_SYNC_SECONDS, workspace_command
from kgg.common.vm_runtime import CloudError

RESIZE_TRIES = 3
RESIZE_BACKOFF_SECONDS = 10.0
STOP_PATH = "docs/CONTRACTS.md, 'Stopping itself'"


def stop_hint(agent: Agent) -> str:
    """What to do when the stop path fails: stop it by hand, then the grant to look at."""
    workflow = agent.instance.stop_workflow or "(no kgg-stop-workflow in the metadata)"
    return (
        "it keeps running and paying: stop it with kgg stop; then check that the "
        f"VM's account may start {workflow} (its custom role *_stop_invoke and that binding's "
        f"IAM condition) and that the workflow's account may resize the group ({STOP_PATH}); "
        "`pulumi up` restores both"
    )


def check_stop_path(agent: Agent) -> str:
    """At boot: the stop workflow in check mode (it reads the group, under the same grants as
    the resize); StepFailed with the fix when it is refused."""
    workflow = agent.instance.stop_workflow
    if not workflow:
        raise StepFailed(
            f"the VM is in group {agent.instance.group} but its metadata names no stop workflow",
            "run `pulumi up` (a stack from before the stop workflow); " + stop_hint(agent),
        )
    try:
        run_stop_workflow(agent.endpoints, agent.metadata, workflow, check=True)
    except CloudError as error:
        raise StepFailed(
            f"the VM could not check its stop path: {error}", stop_hint(agent)
        ) from error
    return f"stop path checked ({workflow.rsplit('/', 1)[-1]})"


def stop_vm(
    agent: Agent, detail: str, *, idle: bool = True, backoff: float = RESIZE_BACKOFF_SECONDS
) -> bool:
    """True when the VM is on its way out; False when its group refused (it keeps running, and
    the status says so: the user can `kgg stop`). `idle` sets the phase to idle;
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
            if not agent.instance.stop_workflow:
                raise CloudError("the metadata names no stop workflow (kgg-stop-workflow)")
            run_stop_workflow(agent.endpoints, agent.metadata, agent.instance.stop_workflow,
                              check=False)  # fmt: skip
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
        f"error.hint={stop_hint(agent)}",
    )
    return False
