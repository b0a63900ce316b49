"""One reconcile of an LMTrainingJob: read the run, decide (lmops.rollout.training), record, start."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from lmops import kube
from lmops.crd import API_VERSION, SpecError, parse_training_job
from lmops.errors import LmopsError
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
        spec = _run_spec(status) or spec  # a running job keeps the spec it started with
        run = executors.for_spec(spec, settings, obj, client).state(status["runId"])
    decision = decide_training(spec, status, run, run_id=run_id_for(meta["namespace"], meta["name"], meta["uid"]),
                               generation=meta.get("generation", 0), now=dt.datetime.now(dt.timezone.utc))
    if decision.status != status:  # recorded before the run starts: the run id is chosen once
        kube.patch_status(API_VERSION, KIND, meta["name"], meta["namespace"], status_patch(status, decision.status),
                          client=client)
        stage_events(obj, status, decision.status, client=client)
    for action in decision.actions:
        if isinstance(action, StartRun):
            try:
                executors.for_spec(action.spec, settings, obj, client).start(action.run_id, action.spec)
            except LmopsError as e:  # a job the executor cannot run (no staging prefix): Failed, saying why
                kube.patch_status(API_VERSION, KIND, meta["name"], meta["namespace"],
                                  {"phase": "Failed", "message": str(e)}, client=client)
                return None
    return decision.requeue_after


def _run_spec(status: dict[str, Any]):
    try:
        return parse_training_job(json.loads(status["runSpec"]), check_config=False) if status.get("runSpec") else None
    except (ValueError, SpecError):
        return None


EVENT_STATES = {"Running": ("StageStarted", "Normal"), "Succeeded": ("StageSucceeded", "Normal"),
                "Cached": ("StageCached", "Normal"), "Skipped": ("StageSkipped", "Normal"),
                "Failed": ("StageFailed", "Warning")}


def stage_events(obj: dict[str, Any], before: dict[str, Any], after: dict[str, Any], *, client=None) -> None:
    """An Event per stage change (started, succeeded / cached / skipped, failed), named by job, stage and state so
    that a restarted operator re-posting it gets a 409 instead of a duplicate."""
    old = {e["name"]: e.get("state") for e in before.get("stages") or []}
    meta = obj["metadata"]
    for entry in after.get("stages") or []:
        state = entry.get("state")
        if state == old.get(entry["name"]) or state not in EVENT_STATES:
            continue
        reason, kind = EVENT_STATES[state]
        what = f" ({entry['job']})" if entry.get("job") else ""
        text = f"stage {entry['name']}{what}: {state.lower()}"
        if entry.get("message") or entry.get("detail"):
            text += f": {entry.get('message') or entry.get('detail')}"
        kube.create_event({**obj, "apiVersion": API_VERSION, "kind": KIND},
                          name=f"{meta['name']}.{meta['uid'][:8]}.{entry['name']}.{state.lower()}",
                          reason=reason, message=text, type_=kind, client=client)


def cancel(obj: dict[str, Any], settings: Settings) -> None:
    """The resource is being deleted: stop its run (nothing to do when it never started or has ended)."""
    run_id = (obj.get("status") or {}).get("runId")
    try:
        spec = parse_training_job(obj.get("spec"), check_config=False)
    except SpecError:
        return
    if run_id:
        executors.for_spec(spec, settings, obj).cancel(run_id)
