"""The cluster path of the pipeline, end to end short of the real controllers: kfp's local runner with
``launcher=kuberay`` and ``deploy_target=kubernetes`` on the micro config, against the session's real API
server (`lmops cluster`). The train task stages the tokens in S3 (moto) through kuberay.staging_uri and
submits a RayJob, whose Ray cluster the KubeRay stand-in runs as pods of the lmops image (sized to fit the
2-core node); register goes to the session's MLflow server; deploy applies an InferenceService, which the KServe
stand-in serves with a predictor pod of the lmops image, and the test talks to the URL in its status."""

from __future__ import annotations

import json
import time

import pytest
import requests
from micro_pipeline import MICRO, write_corpus
from ray_pods import SMALL_PODS

from lmops import kube, storage
from lmops.pipeline.local import TASKS, run_pipeline

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
RAYJOB, ISVC = ("ray.io/v1", "RayJob"), ("serving.kserve.io/v1beta1", "InferenceService")


def test_kuberay_and_kubernetes_through_kfps_local_runner(kube_cluster, kube_namespace, kube_s3_secret, s3, pod_s3_env,
                                                          mlflow_server, mlflow_for_pods, node_image, ray_address,
                                                          tmp_path, monkeypatch):
    client, ns = kube_cluster.client(), kube_namespace
    _, bucket = s3
    monkeypatch.setenv("LMOPS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)  # the config's relative workdir lands here
    overrides = [*MICRO, f"cache_dir={tmp_path / 'cache'}", f"kuberay.staging_uri=s3://{bucket}/staging",
                 f"kuberay.namespace={ns}", f"kuberay.env_from_secrets=[{kube_s3_secret}]",
                 "kuberay.env=" + json.dumps(pod_s3_env),  # the Ray pods reach moto through the node's relay
                 *(f"kuberay.{k}={v}" for k, v in {**SMALL_PODS, "head_ranks": 1}.items()),
                 "kuberay.poll_s=0.5", f"deploy.namespace={ns}", "deploy.name=lm-cluster"]
    t0 = time.monotonic()
    s = run_pipeline("micro", overrides, model_name="lm-cluster", sources=[str(write_corpus(tmp_path / "corpus"))],
                     # MLflow at the node's address: the tasks here, the RayJob's pods and the predictor pod reach it
                     tracking_uri=mlflow_for_pods, ray_address=ray_address, launcher="kuberay",
                     deploy_target="kubernetes")
    wall_s = time.monotonic() - t0

    assert [r["stage"] for r in s["rows"]] == ["config", *TASKS[1:]], s["rows"]
    assert all(r["status"] == "ran" for r in s["rows"]), s["rows"]

    # training ran as a RayJob on the API server, which the KubeRay stand-in ran to success
    jobs, _ = kube.list_objects(*RAYJOB, ns, client=client)
    assert len(jobs) == 1, jobs
    job = jobs[0]
    assert job["status"]["jobStatus"] == "SUCCEEDED" and job["status"]["jobDeploymentStatus"] == "Complete"
    train = next(r for r in s["rows"] if r["stage"] == "train")
    assert train["detail"] == f"RayJob {job['metadata']['name']}: SUCCEEDED"
    # ...reading the tokens staged in S3 (the local runner's artifacts are folders) and writing its checkpoint there
    entry = job["spec"]["entrypoint"]
    assert f"--tokens s3://{bucket}/staging/tokens/" in entry
    assert f"--out s3://{bucket}/staging/checkpoints/{ns}/{job['metadata']['name']}" in entry
    ckpt = f"s3://{bucket}/staging/checkpoints/{ns}/{job['metadata']['name']}/manifest.json"
    assert storage.exists(ckpt)

    # registered in the session's MLflow server, the candidate alias on it
    from mlflow.tracking import MlflowClient

    mlflow = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    name, version = s["registered"].removeprefix("models:/").split("/")
    assert name == "lm-cluster" and mlflow.get_model_version_by_alias(name, "candidate").version == version

    # served as an InferenceService, Ready, at the URL its status gives, answering a completion over HTTP
    isvc = kube.get(*ISVC, "lm-cluster", ns, client=client)
    assert isvc["metadata"]["annotations"]["lmops.dev/model-uri"] == s["registered"]
    status = isvc["status"]
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"
    assert s["endpoint"] == status["url"]
    r = requests.post(f"{status['url']}/openai/v1/completions",
                      json={"model": "lm-cluster", "prompt": "def return", "max_tokens": 4}, timeout=60)
    assert r.status_code == 200 and isinstance(r.json()["choices"][0]["text"], str), r.text
    assert isinstance(s["example"]["completion"], str)
    print(f"cluster path of the pipeline (launcher=kuberay, deploy_target=kubernetes, micro): {wall_s:.1f}s wall;"
          f" stages {s['stages_s']:.1f}s")
