"""LMTrainingJob executors: the kfp run request against the compiled pipeline (no backend here), and
the local executor's start/state/cancel with real processes."""

from __future__ import annotations

import json
import time

from lmops.crd import parse_training_job
from lmops.operator.executors import kfp as kfp_exec
from lmops.operator.executors.local import LocalExecutor, _registered, _stages, _summary

KFP_TYPES = {"STRING": str, "LIST": list, "NUMBER_INTEGER": int, "STRUCT": dict, "BOOLEAN": bool}


def kfp_spec(**kw):
    return parse_training_job({"modelName": "lm-demo", "config": "small", "overrides": {"train.max_steps": "200"},
                               "sources": ["s3://corpus/raw/*.jsonl"], "ray": {"workers": 4, "gpusPerWorker": 1,
                                                                               "launcher": "kuberay"},
                               "mlflowTrackingUri": "http://mlflow.mlops:5000",
                               "executor": {"type": "kfp", "kfp": {"host": "http://ml-pipeline.kubeflow:8888",
                                                                   "namespace": "team-a", "serviceAccount": "pipeline-runner",
                                                                   **kw}}}, check_config=False)


def test_kfp_arguments_match_the_compiled_pipeline():
    declared = kfp_exec.compiled_inputs()
    args = kfp_exec.arguments(kfp_spec())
    for name, value in args.items():
        assert name in declared, f"{name} is not a parameter of the compiled pipeline"
        assert isinstance(value, KFP_TYPES[declared[name]["parameterType"]]), name
    assert args["overrides"] == ["train.max_steps=200"] and args["num_workers"] == 4 and args["launcher"] == "kuberay"


def test_kfp_run_body_is_what_kfp_client_posts():
    req = kfp_exec.run_request("ns-job-1234abcd", kfp_spec(enableCaching=False))
    body = kfp_exec.run_body(req, experiment_id="exp-1")
    assert body.display_name == "ns-job-1234abcd" and body.service_account == "pipeline-runner"
    assert body.runtime_config.parameters["model_name"] == "lm-demo"
    spec = body.pipeline_spec["pipeline_spec"]  # with the platform spec (GPU selectors) beside it
    assert "platform_spec" in body.pipeline_spec
    assert spec["pipelineInfo"]["name"] == "lmops"
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks and all(not t.get("cachingOptions", {}).get("enableCache") for t in tasks.values())
    import kfp_server_api

    wire = kfp_server_api.ApiClient().sanitize_for_serialization(body)
    json.dumps(wire)  # serializable as sent
    assert wire["runtime_config"]["parameters"]["sources"] == ["s3://corpus/raw/*.jsonl"]


def test_kfp_state_mapping():
    assert kfp_exec.STATES["SUCCEEDED"] == "Succeeded" and kfp_exec.STATES["CANCELED"] == "Cancelled"


def test_local_log_parsing():
    log = ("\x1b[0mExecuting task \x1b[96m'build'\x1b[0m\nTask \x1b[96m'build'\x1b[0m finished with status"
           " \x1b[92mSUCCESS\x1b[0m\nExecuting task \x1b[96m'tokenize'\x1b[0m\n")
    stages, current = _stages(log)
    assert stages["build"] == "Succeeded" and stages["tokenize"] == "Running" and current == "tokenize"
    summary = {"registered": "models:/m/7", "variants": {"fp32": {"perplexity": 9.5, "bits_per_byte": 2.1}}}
    text = "noise\n" + json.dumps(summary, indent=2) + "\n"
    assert _registered(_summary(text)) == ("7", {"perplexity": 9.5, "bitsPerByte": 2.1})


def test_local_start_is_idempotent_and_cancel_stops_the_group(tmp_path, monkeypatch):
    import lmops.operator.executors.local as local

    # a stand-in command that runs until stopped: the executor's own wrapper, state and cancel are real
    monkeypatch.setattr(local, "command", lambda spec: ["sleep", "60"])
    ex = LocalExecutor(tmp_path, None)
    spec = parse_training_job({"modelName": "m"}, check_config=False)
    assert ex.start("r1", spec) is True
    assert ex.start("r1", spec) is False, "a second start of the same run id does nothing"
    assert ex.state("r1").state == "Running"
    ex.cancel("r1")
    assert ex.state("r1").state == "Cancelled"
    assert ex.state("nope") is None


def test_local_failed_run_reports_its_error(tmp_path, monkeypatch):
    import lmops.operator.executors.local as local

    monkeypatch.setattr(local, "command", lambda spec: ["sh", "-c", "echo 'ConfigError: bad key'; exit 2"])
    ex = LocalExecutor(tmp_path, None)
    ex.start("r2", parse_training_job({"modelName": "m"}, check_config=False))
    deadline = time.time() + 10
    while ex.state("r2").state == "Running" and time.time() < deadline:
        time.sleep(0.1)
    st = ex.state("r2")
    assert st.state == "Failed" and "exit status 2" in st.message and "ConfigError" in st.message
