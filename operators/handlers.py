"""kopf handlers for lmops: decorators only. The work is in lmops.operator (I/O) and lmops.rollout
(decisions); see lmops.operator.runtime for the loop each resource gets."""

import asyncio
import logging

import kopf

from lmops.crd import GROUP, VERSION
from lmops.operator import runtime, training


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_):
    settings.posting.level = 30  # kopf's own events: warnings and errors only; ours say what happened
    settings.persistence.finalizer = "lmops.dev/operator"
    # no cluster-wide scans (namespaces, CRDs): the Role is namespaced and the namespaces are named
    settings.scanning.disabled = True
    runtime.RUNTIME.start()


@kopf.on.cleanup()
async def cleanup(**_):
    runtime.RUNTIME.stop()


async def _until_stopped(loop, kind: str, namespace: str, name: str) -> None:
    """kopf stops an async daemon by cancelling it and logs the cancellation as a warning; a stop is the
    normal end of a loop (operator shutdown, resource deleted), so it ends here, at info level."""
    try:
        await loop
    except asyncio.CancelledError:
        logging.getLogger("lmops.operator").info("%s %s/%s: loop stopped", kind, namespace, name)


@kopf.daemon(GROUP, VERSION, "modeldeployments", cancellation_timeout=10)
async def model_deployment(namespace, name, stopped, **_):
    await _until_stopped(runtime.RUNTIME.deployment_loop(namespace, name, stopped), "ModelDeployment", namespace,
                         name)


@kopf.on.update(GROUP, VERSION, "modeldeployments", field="spec")
def model_deployment_changed(namespace, name, **_):
    runtime.RUNTIME.wake(namespace, name)


@kopf.daemon(GROUP, VERSION, "lmtrainingjobs", cancellation_timeout=10)
async def training_job(namespace, name, stopped, **_):
    await _until_stopped(runtime.RUNTIME.training_loop(namespace, name, stopped), "LMTrainingJob", namespace, name)


@kopf.on.delete(GROUP, VERSION, "lmtrainingjobs")
def training_job_deleted(body, **_):
    training.cancel(dict(body), runtime.RUNTIME.settings)
