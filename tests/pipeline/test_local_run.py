"""The whole pipeline through kfp's local runner (the `make run` path) on a micro config: real kfp
SubprocessRunner tasks, a real local Ray for training, the session's real MLflow server, and a real KServe
model server answering over HTTP at the end. Then a second run reuses the cached stages and keeps the
server, and a failing stage stops the run with its error."""

from __future__ import annotations

import os

import pytest
import requests
from micro_pipeline import MICRO, write_corpus

from lmops.pipeline import servers
from lmops.pipeline.local import RUN_ENV, PipelineRunError, run_pipeline

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def state(tmp_path_factory, monkeypatch_module):
    root = tmp_path_factory.mktemp("pipeline")
    monkeypatch_module.setenv("LMOPS_STATE_DIR", str(root / "state"))
    monkeypatch_module.chdir(root)  # relative paths of the config (workdir) land here, not in the checkout
    yield root, write_corpus(root / "corpus")
    servers.stop_all()


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def first_run(state, mlflow_server, ray_address, micro_stage_cache):
    root, corpus = state
    overrides = [*MICRO, f"cache_dir={micro_stage_cache}"]
    return run_pipeline("micro", overrides, model_name="lm-pipeline", sources=[str(corpus)],
                        tracking_uri=mlflow_server, ray_address=ray_address)


def test_the_whole_pipeline_runs_and_serves(first_run, mlflow_server):
    s = first_run
    stages = [r["stage"] for r in s["rows"]]
    assert stages == ["config", "build", "tokenize", "train", "evaluate", "compress", "register", "deploy"], s
    assert all(r["status"] == "ran" for r in s["rows"]), s["rows"]
    assert s["overhead_s"] >= 0 and s["total_s"] >= s["stages_s"]
    # compression figures reached the summary
    assert {"fp32", "int8", "pruned"} <= set(s["variants"])
    assert s["variants"]["int8"]["perplexity_ratio"] > 0
    # registered in the real MLflow server, the candidate alias on the registered version
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    name, version = s["registered"].removeprefix("models:/").split("/")
    assert name == "lm-pipeline"
    assert client.get_model_version_by_alias(name, "candidate").version == version
    mv = client.get_model_version(name, version)
    assert mv.tags["lmops.gate.passed"] == "true" and mv.tags["lmops.pipeline_run_id"]
    # the endpoint serves that version over HTTP
    r = requests.post(f"{s['endpoint']}/v1/models/lmops:predict",
                      json={"instances": [{"prompt": "def return", "max_new_tokens": 4}]}, timeout=60)
    assert r.status_code == 200 and isinstance(r.json()["predictions"][0]["text"], str)
    # the example is the configured sampled request, and the summary says how it was sampled
    assert s["example"]["prompt"] == "Return the" and isinstance(s["example"]["completion"], str)
    assert s["example"]["settings"] == "temperature 0.7, top_p 0.9, seed 0, 32 tokens"
    assert "serve-lmops" in servers.running()


def test_a_second_run_reuses_cached_stages_and_the_server(first_run, state, mlflow_server, ray_address,
                                                           tmp_path, monkeypatch, micro_stage_cache):
    root, corpus = state
    old_pid = servers.running()["serve-lmops"]["pid"]
    overrides = [*MICRO, f"cache_dir={micro_stage_cache}"]
    again = run_pipeline("micro", overrides, model_name="lm-pipeline",
                         sources=[str(corpus)], tracking_uri=mlflow_server, ray_address=ray_address)
    status = {r["stage"]: r["status"] for r in again["rows"]}
    for stage in ("build", "tokenize", "train", "evaluate", "compress"):
        assert status[stage] == "cached", again["rows"]
    assert again["registered"] == first_run["registered"]  # the same content: the same version, reused
    # the server already serves that version with the same settings: kept, not restarted
    assert status["deploy"] == "reused" and servers.running()["serve-lmops"]["pid"] == old_pid
    assert requests.get(f"{again['endpoint']}/v1/models/lmops", timeout=10).status_code == 200
    assert again["example"] == first_run["example"]  # seeded sampling, same model: the same text
    # other serving settings: the server is replaced
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    from lmops.config import load_config

    changed = load_config("micro", [*overrides, "serve.max_batch_size=4"])
    endpoint = servers.deploy_and_record(changed, again["registered"], tmp_path / "deploy")
    assert not endpoint.get("reused") and servers.running()["serve-lmops"]["pid"] != old_pid


def test_the_in_process_runner_runs_the_same_chain(first_run, state, mlflow_server, ray_address, micro_stage_cache):
    """No kfp, no task processes: the same steps, so the same cache keys (every stage before register is
    served by the kfp run's cache) and the same registered version."""
    root, corpus = state
    overrides = [*MICRO, f"cache_dir={micro_stage_cache}"]
    before = {k: os.environ.get(k) for k in RUN_ENV}
    s = run_pipeline("micro", overrides, model_name="lm-pipeline", sources=[str(corpus)], tracking_uri=mlflow_server,
                     ray_address=ray_address, runner="inprocess")
    # the run's MLflow URI, Ray address and PATH were this process's only while it ran
    assert {k: os.environ.get(k) for k in RUN_ENV} == before
    assert [r["stage"] for r in s["rows"]] == [r["stage"] for r in first_run["rows"]], s["rows"]
    kfp_rows = {r["stage"]: r for r in first_run["rows"]}
    for r in s["rows"]:
        if r["stage"] in ("build", "tokenize", "train", "evaluate", "compress"):
            assert r["status"] == "cached" and r["detail"] == kfp_rows[r["stage"]]["detail"], (r, kfp_rows)
    assert s["registered"] == first_run["registered"] and s["variants"] == first_run["variants"]
    assert s["run_dir"] == str(root / "runs" / "micro") and (root / "runs" / "micro" / "checkpoint").is_dir()
    assert requests.get(f"{s['endpoint']}/v1/models/lmops", timeout=10).status_code == 200


def test_a_failing_stage_stops_the_run_with_its_error(state, mlflow_server, ray_address, tmp_path, capsys):
    empty = tmp_path / "no-data"
    empty.mkdir()
    before = {k: os.environ.get(k) for k in RUN_ENV}
    with pytest.raises(PipelineRunError, match="task 'build'"):
        run_pipeline("micro", MICRO, model_name="lm-pipeline-fail", sources=[str(empty)], tracking_uri=mlflow_server,
                     ray_address=ray_address)
    assert {k: os.environ.get(k) for k in RUN_ENV} == before
    out = capsys.readouterr().out
    assert "no-data" in out  # the build stage's own message, in the task log
    assert "Executing task \x1b[96m'train'" not in out and "'train'" not in out.split("'build'")[-1]
