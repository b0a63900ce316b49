"""The ``kubernetes`` executor's decision: from what exists in the cluster (each stage's Job or RayJob, looked up
by its deterministic name) to the run's state and the one stage to create next. No I/O.

Nothing is remembered between reconciles: a stage whose object exists is never created again, and the next
stage is the first one with no object whose predecessors all succeeded. An operator killed anywhere
therefore resumes from the cluster as it finds it: it cannot create a stage twice (the name exists, the
create is a 409) nor lose one (a stage with no object is created on the next reconcile).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lmops.pipeline.stage_job import STAGES
from lmops.rollout.training import FAILED, PENDING, RUNNING, SUCCEEDED, RunState

NOT_CREATED, ACTIVE, DONE, BROKEN = "NotCreated", "Running", "Succeeded", "Failed"


@dataclass(frozen=True)
class StageObject:
    """One stage's Job or RayJob as observed: ``state`` is ACTIVE, DONE or BROKEN; ``result`` the stage's
    termination message (its summary row) once it succeeded; ``reason``/``message`` why it failed."""

    name: str
    state: str
    start: str | None = None
    end: str | None = None
    result: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    message: str = ""


def run_state(observed: dict[str, StageObject | None]) -> RunState:
    """The run from its stages' objects (stage name -> object, None where none exists)."""
    stages: dict[str, str] = {}
    details: dict[str, dict[str, Any]] = {}
    current = next_stage = None
    failure = ""
    for stage in STAGES:
        obj = observed.get(stage)
        if obj is None:
            stages[stage] = "Pending"
            if next_stage is None and current is None and not failure:
                next_stage = stage
            continue
        details[stage] = _detail(obj)
        if obj.state == ACTIVE:
            stages[stage], current = "Running", stage
        elif obj.state == BROKEN:
            stages[stage] = "Failed"
            failure = failure or f"stage {stage} failed ({obj.name}): {obj.reason}: {obj.message}".strip()
        else:
            stages[stage] = "Cached" if obj.result.get("status") == "cached" else "Succeeded"
    evaluate = (observed.get("evaluate") or StageObject("", NOT_CREATED)).result
    gate_failed = evaluate.get("gate_passed") is False
    if gate_failed and next_stage == "register":  # as the pipeline: nothing is registered past a failed gate
        stages["register"], next_stage = "Skipped", None
    metrics = _metrics(evaluate.get("metrics") or {})
    if failure:
        return RunState(FAILED, stages, None, None, metrics, failure[:2000], details)
    if next_stage is None and current is None:
        reg = (observed.get("register") or StageObject("", NOT_CREATED)).result
        version = reg.get("candidate_version") or None
        message = (f"registered {reg.get('model_uri')}" if version else
                   "nothing registered: " + "; ".join(evaluate.get("gate_reasons") or ["no variant passed its gates"]))
        return RunState(SUCCEEDED, stages, None, version, metrics, message, details)
    state = PENDING if all(o is None for o in observed.values()) else RUNNING
    return RunState(state, stages, current or next_stage, None, metrics, "", details, next_stage=next_stage)


def _detail(obj: StageObject) -> dict[str, Any]:
    out = {"job": obj.name}
    if obj.start:
        out["startTime"] = obj.start
    if obj.end:
        out["completionTime"] = obj.end
    if obj.state == BROKEN:
        out["reason"] = obj.reason or "Failed"
        out["message"] = obj.message[-2000:]
    elif obj.result.get("detail"):
        out["detail"] = str(obj.result["detail"])[:300]
    return out


def _metrics(m: dict[str, Any]) -> dict[str, float]:
    named = {"perplexity": m.get("perplexity"), "bitsPerByte": m.get("bits_per_byte")}
    return {k: round(float(v), 4) for k, v in named.items() if isinstance(v, (int, float))}
