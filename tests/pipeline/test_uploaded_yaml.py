"""The compiled ``pipelines/lmops_pipeline.yaml`` run as a user uploads it, then read as a user reads the result.

The YAML is loaded with kfp's ``load_component_from_file`` and run through kfp's local runner end to end (micro
config, launcher local, deploy local) with the MLflow server given *only* as the ``mlflow_tracking_uri``
parameter: no MLFLOW_TRACKING_URI anywhere in the environment (``make run`` sets one, which hid a deploy that
could not find its model). Then the MLflow UI, in headless Chromium, shows what the run registered: the version
page names its training run as source run and the description's bits per byte, and the training run's page
its metrics and the version under "Registered models".
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from browser import assert_page_shows
from micro_pipeline import MICRO, write_corpus

from lmops.config import REPO_ROOT
from lmops.pipeline import servers
from lmops.pipeline.local import task_rows
from lmops.train.ray_head import LOCAL_RAY_ENV

pytestmark = pytest.mark.slow
PIPELINE_YAML = REPO_ROOT / "pipelines" / "lmops_pipeline.yaml"
MODEL = "lm-uploaded"
TASKS = ["resolve-config", "build", "tokenize", "train", "evaluate", "compress", "register", "deploy"]


@pytest.fixture(scope="module")
def uploaded_run(tmp_path_factory, mlflow_server, ray_address, micro_stage_cache):
    from kfp import components, local

    root = tmp_path_factory.mktemp("uploaded-yaml")
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)  # the parameter is the only way the tasks learn the server
    mp.setenv("LMOPS_STATE_DIR", str(root / "state"))
    mp.chdir(root)
    # kfp's SubprocessRunner runs each task with the first python3 on PATH; training joins the session's Ray
    mp.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    mp.setenv("RAY_ADDRESS", ray_address)
    mp.setenv(LOCAL_RAY_ENV, "1")
    mp.setenv("RAY_AUTH_MODE", "disabled")
    corpus = write_corpus(root / "corpus")
    pipeline = components.load_component_from_file(str(PIPELINE_YAML))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root / "kfp"), raise_on_error=True)
    try:
        pipeline(config="micro", overrides=MICRO, model_name=MODEL, sources=[str(corpus)], launcher="local",
                 deploy_target="local", mlflow_tracking_uri=mlflow_server, cache_dir=str(micro_stage_cache))
        yield task_rows(root / "kfp")
    finally:
        servers.stop_all()
        mp.undo()


@pytest.fixture
def client(mlflow_server):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)


def test_every_task_of_the_uploaded_yaml_succeeds_and_deploy_serves(uploaded_run, mlflow_server):
    rows = uploaded_run
    assert sorted(rows) == sorted(TASKS), rows.keys()
    # the stages before register may come from the stage cache test_local_run.py filled (same content)
    assert all(rows[t]["status"] in ("ran", "cached") for t in TASKS), {t: rows[t]["status"] for t in TASKS}
    assert rows["register"]["status"] == rows["deploy"]["status"] == "ran"
    assert rows["register"]["model_uri"].startswith(f"models:/{MODEL}/")
    # the model server deploy started was given the run's MLflow server (it resolved models:/ with it)
    endpoint = servers.running()["serve-lmops"]
    environ = Path(f"/proc/{endpoint['pid']}/environ").read_bytes().split(b"\0")
    assert f"MLFLOW_TRACKING_URI={mlflow_server}".encode() in environ
    assert endpoint["model_uri"] == rows["register"]["model_uri"]


def test_the_version_comes_from_the_training_run_which_holds_the_evaluation(uploaded_run, client):
    version = uploaded_run["register"]["model_uri"].rsplit("/", 1)[1]
    mv = client.get_model_version(MODEL, version)
    run = client.get_run(mv.run_id)
    assert run.data.tags["lmops.stage"] == "train" and run.info.run_name.startswith("lmops-train-")
    assert "mlflow.note.content" not in run.data.tags  # the train task's own run, not one recorded afterwards
    assert len(client.get_metric_history(run.info.run_id, "loss")) >= 2  # the per-step curve
    for metric in ("bits_per_byte", "perplexity", "latency_ms_per_token", "size_bytes", "gzip_9_bits_per_byte",
                   "xz_9e_bits_per_byte"):
        assert metric in run.data.metrics, metric
    assert {(v.name, v.version) for v in client.search_model_versions(f"run_id = '{run.info.run_id}'")} >= {(MODEL, version)}


def test_the_mlflow_ui_links_version_and_training_run(uploaded_run, client, mlflow_server):
    """What a person sees in a browser: the version page names the training run and says the bits per byte;
    the run page lists its metrics and, under "Registered models", the version."""
    version = uploaded_run["register"]["model_uri"].rsplit("/", 1)[1]
    mv = client.get_model_version(MODEL, version)
    run = client.get_run(mv.run_id)
    bpb = f"{run.data.metrics['bits_per_byte']:.3f} bits per byte"
    assert bpb in mv.description
    assert_page_shows(f"{mlflow_server}/#/models/{MODEL}/versions/{version}",
                      ["Source Run", run.info.run_name, bpb, "Gates:", "lmops.gate.passed"], "mlflow-version-page")
    text = assert_page_shows(f"{mlflow_server}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}",
                             [run.info.run_name, "bits_per_byte", "perplexity", "xz_9e_bits_per_byte", "loss",
                              "Registered models", MODEL], "mlflow-run-page")
    assert f"v{version}" in text.split("Registered models", 1)[1]
