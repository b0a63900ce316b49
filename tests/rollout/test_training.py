"""lmops.rollout.training: the LMTrainingJob phase follows the run; the run id is recorded before the start."""

from __future__ import annotations

import datetime as dt

from lmops.crd import SpecError, parse_training_job
from lmops.rollout import RunState, StartRun, decide_training

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
SPEC = parse_training_job({"modelName": "m"}, check_config=False)


def step(status, run, generation=1, spec=SPEC):
    return decide_training(spec, status, run, run_id="ns-job-abcd1234", generation=generation, now=T0)


def test_run_id_recorded_then_started_once_even_after_a_crash():
    d = step({}, None)
    assert d.status["phase"] == "Pending" and d.status["runId"] == "ns-job-abcd1234"
    assert d.actions == [StartRun("ns-job-abcd1234", SPEC)]
    # killed after recording, before starting: the same run id is started (executors dedupe by id)
    again = step(d.status, None)
    assert again.actions == d.actions and again.status["startTime"] == d.status["startTime"]


def test_mirrors_the_run_until_it_ends():
    s = step({}, None).status
    running = RunState("Running", {"build": "Succeeded", "train": "Running"}, current_stage="train")
    d = step(s, running)
    assert d.actions == [] and d.status["phase"] == "Running" and d.status["currentStage"] == "train"
    assert d.requeue_after
    done = RunState("Succeeded", {"build": "Succeeded", "train": "Succeeded", "register": "Succeeded"},
                    registered_version="3", metrics={"perplexity": 12.5, "bitsPerByte": 1.9})
    d = step(d.status, done)
    assert d.status["phase"] == "Succeeded" and d.status["registeredVersion"] == "3"
    assert d.status["metrics"]["bitsPerByte"] == 1.9 and d.status["completionTime"]
    assert "currentStage" not in d.status and d.requeue_after is None
    assert step(d.status, None).actions == [], "a finished job never starts again"


def test_failed_run_and_spec_changes():
    s = step(step({}, None).status, RunState("Running")).status
    d = step(s, RunState("Running"), generation=2)
    assert next(c for c in d.status["conditions"] if c["type"] == "SpecChanged")["status"] == "True"
    d = step(d.status, RunState("Failed", message="task train failed"))
    assert d.status["phase"] == "Failed" and d.status["message"] == "task train failed"
    assert next(c for c in d.status["conditions"] if c["type"] == "Complete")["status"] == "False"


def test_invalid_spec_never_starts():
    err = SpecError("spec.overrides[train.max_stepz]", "unknown key")
    d = decide_training(err, {}, None, run_id="x", generation=1, now=T0)
    assert d.status["phase"] == "Failed" and d.actions == []
    assert "spec.overrides[train.max_stepz]" in d.status["message"]
