"""The kubernetes executor's decision from the stages' objects (lmops.rollout.stage_jobs): the next stage to create,
the run's state, a failure's reason, a failed gate skipping register, and the restart cases (an object already
there is never a stage to create again)."""

from lmops.rollout.stage_jobs import ACTIVE, BROKEN, DONE, StageObject, run_state

ORDER = ("build", "tokenize", "train", "evaluate", "compress", "register")


def done(name, **result):
    return StageObject(f"j-{name}", DONE, "2026-12-06T05:00:00Z", "2026-12-06T05:01:00Z", result=result)


def observed(**objs):
    return {s: objs.get(s) for s in ORDER}


def test_next_stage_is_the_first_without_an_object_after_successes():
    run = run_state(observed(build=done("build")))
    assert run.state == "Running" and run.next_stage == "tokenize" and run.current_stage == "tokenize"
    assert run.stages == {"build": "Succeeded", **{s: "Pending" for s in ORDER[1:]}}
    assert run.stage_details["build"] == {"job": "j-build", "startTime": "2026-12-06T05:00:00Z",
                                          "completionTime": "2026-12-06T05:01:00Z"}


def test_a_running_stage_blocks_the_next_one():
    run = run_state(observed(build=done("build"), tokenize=StageObject("j-tokenize", ACTIVE)))
    assert run.next_stage is None and run.current_stage == "tokenize" and run.stages["tokenize"] == "Running"


def test_cached_stages_and_the_registered_version():
    objs = {s: done(s, status="cached") for s in ORDER[:-1]}
    objs["evaluate"] = done("evaluate", status="cached", gate_passed=True, metrics={"perplexity": 3.5,
                                                                                    "bits_per_byte": 1.25})
    objs["register"] = done("register", status="ran", candidate_version="4", model_uri="models:/m/4")
    run = run_state(observed(**objs))
    assert run.state == "Succeeded" and run.registered_version == "4" and run.next_stage is None
    assert run.metrics == {"perplexity": 3.5, "bitsPerByte": 1.25} and run.message == "registered models:/m/4"
    assert run.stages["build"] == "Cached" and run.stages["train"] == "Cached" and run.stages["register"] == "Succeeded"


def test_a_failed_stage_fails_the_run_with_its_reason_and_nothing_follows():
    bad = StageObject("j-build", BROKEN, reason="BackoffLimitExceeded (pod Error, exit code 1, 2 attempt(s))",
                      message="s3://b/x/: no such file or directory (or nothing matches)")
    run = run_state(observed(build=bad))
    assert run.state == "Failed" and run.next_stage is None
    assert run.message.startswith("stage build failed (j-build): BackoffLimitExceeded") and "nothing matches" in run.message
    assert run.stage_details["build"]["reason"].startswith("BackoffLimitExceeded")


def test_a_failed_gate_skips_register_and_succeeds_with_nothing_registered():
    objs = {s: done(s) for s in ORDER[:3]}
    objs["evaluate"] = done("evaluate", gate_passed=False, gate_reasons=["FAIL perplexity 9.0 > 5.0"])
    objs["compress"] = done("compress")
    run = run_state(observed(**objs))
    assert run.state == "Succeeded" and run.stages["register"] == "Skipped" and run.registered_version is None
    assert "FAIL perplexity" in run.message


def test_a_ready_stage_is_recorded_then_started_and_a_running_job_keeps_its_spec():
    import datetime as dt
    import json

    from lmops.crd.training import parse_training_job
    from lmops.rollout import StartRun, decide_training

    now = dt.datetime(2026, 12, 6, tzinfo=dt.timezone.utc)
    spec = parse_training_job({"modelName": "m"})
    first = decide_training(spec, {}, None, run_id="r", generation=1, now=now)
    assert first.status["executor"] == "kubernetes" and json.loads(first.status["runSpec"])["modelName"] == "m"
    assert first.actions == [StartRun("r", spec)]
    after_build = decide_training(spec, first.status, run_state(observed(build=done("build"))), run_id="r",
                                  generation=2, now=now)
    assert after_build.status["stages"][0]["state"] == "Succeeded" and after_build.actions == [StartRun("r", spec)]
    changed = next(c for c in after_build.status["conditions"] if c["type"] == "SpecChanged")
    assert changed["reason"] == "RefusedWhileRunning" and "generation 2 is not applied" in changed["message"]
