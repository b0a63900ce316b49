"""One reconcile of an LMTrainingJob: read the run, decide (lmops.rollout.training), record, start."""

from __future__ import annotations

import datetime as dt
from typing import Any

from lmops import kube
from lmops.crd import API_VERSION, SpecError, parse_training_job
from lmops.operator import executors
from lmops.operator.settings import Settings
from lmops.rollout import StartRun, decide_training
from lmops.rollout.status import status_patch
from lmops.rollout.training import run_id_for

KIND = "LMTrainingJob"


def reconcile(obj: dict[str, Any], settings: Settings, *, client=None) -> float | None:
    meta, status = obj["metadata"], dict(obj.get("status") or {})
    try:
        spec = parse_training_job(obj.get("spec"))
    except SpecError as e:
        spec = e
    run = None
    if status.get("runId") and not isinstance(spec, SpecError):
        run = executors.for_spec(spec, settings).state(status["runId"])
    decision = decide_training(spec, status, run, run_id=run_id_for(meta["namespace"], meta["name"], meta["uid"]),
                               generation=meta.get("generation", 0), now=dt.datetime.now(dt.timezone.utc))
    if decision.status != status:  # recorded before the run starts: the run id is chosen once
        kube.patch_status(API_VERSION, KIND, meta["name"], meta["namespace"], status_patch(status, decision.status),
                          client=client)
    for action in decision.actions:
        if isinstance(action, StartRun):
            executors.for_spec(action.spec, settings).start(action.run_id, action.spec)
    return decision.requeue_after


def cancel(obj: dict[str, Any], settings: Settings) -> None:
    """The resource is being deleted: stop its run (nothing to do when it never started or has ended)."""
    run_id = (obj.get("status") or {}).get("runId")
    try:
        spec = parse_training_job(obj.get("spec"), check_config=False)
    except SpecError:
        return
    if run_id:
        executors.for_spec(spec, settings).cancel(run_id)
