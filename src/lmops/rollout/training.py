"""LMTrainingJob: the phase follows the executor's run.

The run id is chosen and recorded in status before the run is started (``StartRun`` follows from a
recorded run id the executor does not know), and executors start runs idempotently by that id: an
operator killed between the two starts the run once, not twice. The spec is read once, when the run
starts; a later edit is reported (condition SpecChanged), not applied to a running pipeline.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

from lmops.crd.common import SpecError
from lmops.crd.training import LMTrainingJobSpec
from lmops.rollout.status import iso, set_condition

PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED = "Pending", "Running", "Succeeded", "Failed", "Cancelled"
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)
POLL_S = 5.0


@dataclass(frozen=True)
class RunState:
    """What the executor knows of a run (None from the executor: no run with that id)."""

    state: str  # Pending, Running, Succeeded, Failed, Cancelled
    stages: dict[str, str] = field(default_factory=dict)
    current_stage: str | None = None
    registered_version: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    message: str = ""
    stage_details: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per stage, what status shows beside its state (its Job's name, start and end, why it failed)."""
    next_stage: str | None = None
    """A stage ready to start (executors that start one stage at a time): StartRun again."""


@dataclass(frozen=True)
class StartRun:
    run_id: str
    spec: LMTrainingJobSpec


@dataclass
class TrainingDecision:
    status: dict[str, Any]
    actions: list[Any] = field(default_factory=list)
    requeue_after: float | None = None


def run_id_for(namespace: str, name: str, uid: str) -> str:
    """Stable per resource: a recreated resource (new uid) is a new run."""
    return f"{namespace}-{name}-{uid[:8]}"


def run_spec(spec: LMTrainingJobSpec) -> str:
    """The spec a run started with, as recorded in status: later stages run with it, not with a later edit."""
    return json.dumps(spec.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=True)


def decide_training(spec: LMTrainingJobSpec | SpecError, status: dict[str, Any], run: RunState | None, *,
                    run_id: str, generation: int, now: dt.datetime) -> TrainingDecision:
    s = copy.deepcopy(status)
    phase = s.get("phase")
    if isinstance(spec, SpecError):
        if phase in (None, PENDING):  # never started: nothing runs on a spec we cannot read
            s.update(phase=FAILED, message=str(spec), observedGeneration=generation)
            set_condition(s, "SpecValid", False, "InvalidSpec", str(spec), now, generation)
        return TrainingDecision(s)
    if phase is None or (phase == PENDING and not s.get("runId")):
        # the decision to run, recorded first; StartRun follows from it below
        s.update(phase=PENDING, runId=run_id, executor=spec.executor.kind, observedGeneration=generation,
                 startTime=iso(now), runSpec=run_spec(spec))
        set_condition(s, "SpecValid", True, "Valid", "", now, generation)
    elif s.get("observedGeneration") != generation and phase not in TERMINAL:
        set_condition(s, "SpecChanged", True, "RefusedWhileRunning",
                      f"generation {generation} is not applied: the run started with generation"
                      f" {s.get('observedGeneration')}; create a new LMTrainingJob to train with it", now)
    if phase in TERMINAL:
        return TrainingDecision(s)
    if run is None:
        return TrainingDecision(s, [StartRun(s["runId"], spec)], POLL_S)
    _mirror(s, run, now)
    if run.next_stage and s["phase"] not in TERMINAL:  # recorded in status first, then started
        return TrainingDecision(s, [StartRun(s["runId"], spec)], POLL_S)
    return TrainingDecision(s, [], None if s["phase"] in TERMINAL else POLL_S)


def _mirror(s: dict[str, Any], run: RunState, now: dt.datetime) -> None:
    s["phase"] = run.state
    s["stages"] = [{"name": k, "state": v, **run.stage_details.get(k, {})} for k, v in run.stages.items()]
    if run.current_stage:
        s["currentStage"] = run.current_stage
    if run.registered_version:
        s["registeredVersion"] = run.registered_version
    if run.metrics:
        s["metrics"] = dict(run.metrics)
    if run.message:
        s["message"] = run.message
    if run.state in TERMINAL:
        s.setdefault("completionTime", iso(now))
        s.pop("currentStage", None)
        ok = run.state == SUCCEEDED
        set_condition(s, "Complete", ok, run.state, run.message or (
            f"registered version {run.registered_version}" if run.registered_version else ""), now)
