"""The KubeRay training launch: the RayJob manifest against (our copy of part of) KubeRay's CRD schema,
the decision on KubeRay's status, submit-and-wait against a small stand-in API server on 127.0.0.1
(playing the KubeRay controller by scripting the status it would write), and the entrypoint's staging
through a real S3 endpoint (moto) with a real Ray Train run."""

from __future__ import annotations

import base64
import copy
import json
import re
import shlex
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import jsonschema
import pytest
import yaml

from lmops import kube, storage
from lmops.config import ConfigError, config_from_dict, load_config
from lmops.errors import LmopsError
from lmops.train import rayjob
from lmops.train.rayjob import (
    RayJobError,
    cluster_config,
    decode_config,
    rayjob_outcome,
    render_rayjob,
    submit_and_wait,
    train_on_kuberay,
)

SCHEMA = yaml.safe_load((Path(__file__).parent / "rayjob_v1_schema.yaml").read_text())
TOKENS, CKPT = "s3://lmops-artifacts/run-7/tokens", "s3://lmops-artifacts/run-7/checkpoint"


def validate(manifest: dict) -> None:
    jsonschema.validate(manifest, SCHEMA, cls=jsonschema.Draft202012Validator)


def _cfg(*overrides: str):
    return load_config("tiny", list(overrides))


def _gpu_job():
    cfg = _cfg("train.num_workers=4", "kuberay.gpus_per_worker=2", "kuberay.namespace=ml",
               "kuberay.image=registry.local/lmops:1.2-cuda", "kuberay.service_account=trainer",
               "kuberay.env_from_secrets=[s3-creds, mlflow-creds]", "kuberay.env={NCCL_DEBUG: WARN}",
               "kuberay.node_selector={cloud.google.com/gke-accelerator: nvidia-l4}")
    return cfg, render_rayjob(cfg, name="lmops-train-abc", tokens_uri=TOKENS, checkpoint_uri=CKPT,
                              labels={"lmops.dev/run": "run-7"})


def _b64_config(manifest: dict) -> str:
    argv = shlex.split(manifest["spec"]["entrypoint"])
    return argv[argv.index("--config-b64") + 1]


# ---------------------------------------------------------------- the manifest
def test_four_workers_with_two_gpus_each(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.ml.svc:5000")
    monkeypatch.setenv("LMOPS_S3_ENDPOINT_URL", "http://minio.ml.svc:9000")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2")  # never copied into the manifest
    _, m = _gpu_job()
    validate(m)
    assert m["metadata"]["namespace"] == "ml" and m["metadata"]["labels"]["lmops.dev/run"] == "run-7"
    spec = m["spec"]
    assert spec["submissionMode"] == "K8sJobMode" and spec["shutdownAfterJobFinishes"] is True
    assert spec["activeDeadlineSeconds"] == 6 * 3600 and spec["ttlSecondsAfterFinished"] == 60
    import ray

    assert spec["rayClusterSpec"]["rayVersion"] == ray.__version__
    (group,) = spec["rayClusterSpec"]["workerGroupSpecs"]
    assert group["groupName"] == "gpu-workers" and group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 4
    pod = group["template"]["spec"]
    (worker,) = pod["containers"]
    assert worker["image"] == "registry.local/lmops:1.2-cuda"
    assert worker["resources"]["limits"] == worker["resources"]["requests"] == {"cpu": "8", "memory": "32Gi",
                                                                              "nvidia.com/gpu": 2}
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["serviceAccountName"] == "trainer"
    head_pod = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    (head,) = head_pod["containers"]
    assert "nodeSelector" not in head_pod and "tolerations" not in head_pod  # the head needs no GPU node
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
    assert {p["containerPort"] for p in head["ports"]} == {6379, 8265, 10001}
    for c in (head, worker):
        env = {e["name"]: e["value"] for e in c["env"]}
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.ml.svc:5000"
        assert env["LMOPS_S3_ENDPOINT_URL"] == env["AWS_ENDPOINT_URL_S3"] == "http://minio.ml.svc:9000"
        assert env["NCCL_DEBUG"] == "WARN" and "RAY_AUTH_MODE" not in env
        assert c["envFrom"] == [{"secretRef": {"name": "s3-creds"}}, {"secretRef": {"name": "mlflow-creds"}}]
    text = yaml.safe_dump(m)
    assert "hunter2" not in text and "AWS_SECRET" not in text


def test_entrypoint_round_trips_the_config_the_job_trains_with():
    cfg, m = _gpu_job()
    argv = shlex.split(m["spec"]["entrypoint"])
    assert argv[:5] == ["python", "-m", "lmops.train.rayjob", "run", "--tokens"]
    assert argv[argv.index("--tokens") + 1] == TOKENS and argv[argv.index("--out") + 1] == CKPT
    shipped = decode_config(_b64_config(m))
    assert shipped.model_dump() == cluster_config(cfg, CKPT).model_dump()
    # the cluster's shape, seen by Ray Train: one rank per GPU, checkpoints on shared storage
    assert shipped.train.num_workers == 8 and shipped.train.use_gpu is True
    assert shipped.train.storage_path == CKPT + ".ray/"
    assert shipped.model_dump(exclude={"train", "cache_dir"}) == cfg.model_dump(exclude={"train", "cache_dir"})
    # and the entrypoint's own parser reads it back
    with pytest.raises(ConfigError, match="--config-b64: not base64"):
        decode_config("not base64!")
    with pytest.raises(ConfigError, match=r"(?s)--config-b64: invalid configuration.*train.lr: expected a number"):
        decode_config(base64.b64encode(json.dumps({"train": {"lr": "fast"}}).encode()).decode())


def test_s3_storage_path_is_kept_and_cpu_only_runs_one_rank_per_pod():
    cfg = _cfg("train.num_workers=3", "kuberay.gpus_per_worker=0", "train.storage_path=s3://ckpts/ray",
               "kuberay.worker_cpu=6")
    m = render_rayjob(cfg, name="cpu-run", tokens_uri=TOKENS, checkpoint_uri=CKPT)
    validate(m)
    worker = m["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in worker["resources"]["limits"]
    assert "nvidia.com/gpu" not in worker["resources"]["requests"]
    shipped = decode_config(_b64_config(m)).train
    assert shipped.storage_path == "s3://ckpts/ray" and shipped.use_gpu is False
    assert shipped.num_workers == 3 and shipped.resources_per_worker == {"CPU": 6.0}


def test_what_kuberay_or_the_cluster_would_refuse_is_refused_before_submitting():
    cfg = _cfg()
    with pytest.raises(LmopsError, match="at most 47 characters"):
        render_rayjob(cfg, name="x" * 48, tokens_uri=TOKENS, checkpoint_uri=CKPT)
    with pytest.raises(LmopsError, match="RayJob name 'Train_1'"):
        render_rayjob(cfg, name="Train_1", tokens_uri=TOKENS, checkpoint_uri=CKPT)
    with pytest.raises(LmopsError, match="tokens URI '/data/tokens'.*s3://"):
        render_rayjob(cfg, name="ok", tokens_uri="/data/tokens", checkpoint_uri=CKPT)
    too_many = _cfg("kuberay.gpus_per_worker=4", "train.resources_per_worker={CPU: 4}", "kuberay.worker_cpu=8")
    with pytest.raises(LmopsError, match="needs 16 CPUs, but kuberay.worker_cpu is 8"):
        render_rayjob(too_many, name="ok", tokens_uri=TOKENS, checkpoint_uri=CKPT)
    two_gpu_ranks = _cfg("kuberay.gpus_per_worker=2", "train.resources_per_worker={GPU: 2}")
    with pytest.raises(LmopsError, match="GPU=2: on KubeRay each rank drives one GPU"):
        render_rayjob(two_gpu_ranks, name="ok", tokens_uri=TOKENS, checkpoint_uri=CKPT)
    for bad, where in ((["kuberay.worker_memory=32 gigs"], "kuberay.worker_memory: .*Kubernetes quantity"),
                       (["kuberay.env={AWS_SECRET_ACCESS_KEY: x}"], "look like credentials"),
                       (["kuberay.tolerations=[{key: a, operater: Exists}]"], r"unknown key\(s\) \['operater'\]"),
                       (["kuberay.env_from_secrets=[S3_Creds]"], "not valid Secret names"),
                       (["kuberay.image_pull_policy=Sometimes"], "kuberay.image_pull_policy: expected one of"),
                       (["kuberay.gpus_per_worker=-1"], "kuberay.gpus_per_worker")):
        with pytest.raises(ConfigError, match=where):
            _cfg(*bad)


def test_schema_rejects_what_the_api_server_would_prune_or_refuse():
    _, good = _gpu_job()
    group = lambda m: m["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    typo = copy.deepcopy(good)
    group(typo)["minReplica"] = group(typo).pop("minReplicas")
    bad_quantity = copy.deepcopy(good)
    group(bad_quantity)["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = "32 gigs"
    no_params = copy.deepcopy(good)
    del no_params["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]
    string_gpus = copy.deepcopy(good)
    group(string_gpus)["template"]["spec"]["tolerations"][0]["tolerationSeconds"] = "forever"
    for broken in (typo, bad_quantity, no_params, string_gpus):
        with pytest.raises(jsonschema.ValidationError):
            validate(broken)


# ---------------------------------------------------------------- KubeRay's status, decided
@pytest.mark.parametrize("status, state, words", [
    (None, "pending", None),
    ({}, "pending", None),
    ({"jobDeploymentStatus": "Initializing"}, "pending", None),
    ({"jobDeploymentStatus": "Waiting", "jobStatus": ""}, "pending", None),
    ({"jobDeploymentStatus": "Suspended"}, "pending", "suspended"),
    ({"jobDeploymentStatus": "Running", "jobStatus": "PENDING"}, "running", None),
    ({"jobDeploymentStatus": "Running", "jobStatus": "RUNNING", "rayClusterName": "x-raycluster-abcde"}, "running", None),
    ({"jobDeploymentStatus": "Running", "jobStatus": "SUCCEEDED"}, "running", "waiting for KubeRay"),
    ({"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}, "succeeded", None),
    # KubeRay >= 1.2: a failed Ray job marks the deployment Failed with a reason
    ({"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "reason": "AppFailed",
      "message": "Job entrypoint command failed with exit code 1"}, "failed", "AppFailed: Job entrypoint command failed"),
    # KubeRay 1.1: the same failure shows as Complete + FAILED
    ({"jobDeploymentStatus": "Complete", "jobStatus": "FAILED", "message": "exit code 1"}, "failed", "exit code 1"),
    ({"jobDeploymentStatus": "Running", "jobStatus": "STOPPED"}, "failed", "STOPPED"),
    ({"jobDeploymentStatus": "Failed", "reason": "SubmissionFailed",
      "message": "Job submission has failed. Reason: BackoffLimitExceeded"}, "failed", "SubmissionFailed"),
    ({"jobDeploymentStatus": "Failed", "jobStatus": "RUNNING", "reason": "DeadlineExceeded",
      "message": "The RayJob has passed the activeDeadlineSeconds."}, "failed", "DeadlineExceeded"),
    ({"jobDeploymentStatus": "ValidationFailed", "reason": "ValidationFailed",
      "message": "The RayJob metadata is invalid: name is too long"}, "failed", "refused the RayJob spec.*too long"),
    ({"jobDeploymentStatus": "Retrying", "jobStatus": "FAILED"}, "running", "retrying"),
])
def test_rayjob_outcome(status, state, words):
    got, msg = rayjob_outcome(status)
    assert got == state
    if words:
        assert msg is not None and re.search(words, msg), msg
    elif state != "failed":
        assert msg is None


# ---------------------------------------------------------------- submit and wait, against a stand-in API server
class FakeKube(ThreadingHTTPServer):
    """Just enough of the Kubernetes API for the dynamic client: discovery, and apply / get / delete of
    namespaced RayJobs. ``script[name]`` plays KubeRay: each GET moves the stored object to the next
    status in the list (staying at the last)."""

    daemon_threads = True

    def __init__(self, with_crd: bool = True):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.with_crd = with_crd
        self.objects: dict[tuple[str, str], dict] = {}
        self.script: dict[str, list[dict]] = {}
        self.calls: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    @property
    def client(self):
        from kubernetes import client

        conf = client.Configuration()
        conf.host = f"http://127.0.0.1:{self.server_address[1]}"
        return client.ApiClient(conf)


class _Handler(BaseHTTPRequestHandler):
    server: FakeKube

    def log_message(self, *args):  # quiet
        pass

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _not_found(self, what: str) -> None:
        self._send(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                         "message": f"{what} not found", "code": 404})

    def _discovery(self, path: str) -> dict | None:
        groups = [{"name": "ray.io", "versions": [{"groupVersion": "ray.io/v1", "version": "v1"}],
                   "preferredVersion": {"groupVersion": "ray.io/v1", "version": "v1"}}] if self.server.with_crd else []
        return {
            "/version": {"major": "1", "minor": "30", "gitVersion": "v1.30.0"},
            "/api": {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []},
            "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups},
            "/api/v1": {"kind": "APIResourceList", "groupVersion": "v1", "resources": []},
            "/apis/ray.io/v1": {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "ray.io/v1",
                                "resources": [{"name": "rayjobs", "singularName": "rayjob", "namespaced": True,
                                               "kind": "RayJob", "verbs": ["create", "delete", "get", "list",
                                                                           "patch", "update", "watch"]}]},
        }.get(path)

    def _object_key(self, path: str) -> tuple[str, str] | None:
        parts = path.strip("/").split("/")  # apis/ray.io/v1/namespaces/NS/rayjobs/NAME
        if len(parts) == 7 and parts[:3] == ["apis", "ray.io", "v1"] and parts[3] == "namespaces" and parts[5] == "rayjobs":
            return parts[4], parts[6]
        return None

    def do_GET(self):
        path = urlparse(self.path).path
        found = self._discovery(path)
        if found is not None:
            return self._send(200, found)
        key = self._object_key(path)
        with self.server.lock:
            self.server.calls.append(("GET", path))
            obj = self.server.objects.get(key) if key else None
            if obj is None:
                return self._not_found(path)
            steps = self.server.script.get(key[1])
            if steps:
                obj["status"] = steps.pop(0) if len(steps) > 1 else steps[0]
            return self._send(200, obj)

    def do_PATCH(self):
        path = urlparse(self.path).path
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        key = self._object_key(path)
        assert self.headers["Content-Type"] == "application/apply-patch+yaml"
        with self.server.lock:
            self.server.calls.append(("PATCH", path))
            old = self.server.objects.get(key, {})
            obj = {**body, "metadata": {**body["metadata"], "uid": "u-1", "generation": 1}}
            if "status" in old:
                obj["status"] = old["status"]
            self.server.objects[key] = obj
            return self._send(200, obj)

    def do_DELETE(self):
        path = urlparse(self.path).path
        key = self._object_key(path)
        with self.server.lock:
            self.server.calls.append(("DELETE", path))
            if self.server.objects.pop(key, None) is None:
                return self._not_found(path)
            return self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})


@pytest.fixture
def fake_kube():
    server = FakeKube()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _manifest(name: str = "lmops-train-abc") -> dict:
    return render_rayjob(_cfg("train.num_workers=2"), name=name, tokens_uri=TOKENS, checkpoint_uri=CKPT)


def test_success_logs_each_status_change(fake_kube):
    m = _manifest()
    fake_kube.script["lmops-train-abc"] = [
        {"jobDeploymentStatus": "Initializing"},
        {"jobDeploymentStatus": "Initializing"},
        {"jobDeploymentStatus": "Running", "jobStatus": "PENDING", "rayClusterName": "lmops-train-abc-raycluster-x1",
         "dashboardURL": "lmops-train-abc-raycluster-x1-head-svc.default.svc.cluster.local:8265"},
        {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING", "rayClusterName": "lmops-train-abc-raycluster-x1"},
        {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING", "rayClusterName": "lmops-train-abc-raycluster-x1"},
        {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED", "message": "Job finished successfully."},
    ]
    lines: list[str] = []
    obj = submit_and_wait(m, timeout_s=30, poll_s=0.01, log=lines.append, client=fake_kube.client)
    assert obj["status"]["jobStatus"] == "SUCCEEDED"
    assert fake_kube.objects[("default", "lmops-train-abc")]["spec"] == m["spec"]  # what was applied
    transitions = [line for line in lines if "->" in line]
    assert transitions[0] == "[train] RayJob default/lmops-train-abc: (submitted) -> Initializing (job -)"
    assert transitions[1].startswith("[train] RayJob default/lmops-train-abc: Initializing -> Running (job PENDING)"
                                     "; ray cluster lmops-train-abc-raycluster-x1; dashboard ")
    assert transitions[2] == "[train] RayJob default/lmops-train-abc: Running -> Running (job RUNNING)"
    assert transitions[3].startswith("[train] RayJob default/lmops-train-abc: Running -> Complete (job SUCCEEDED)")
    assert len(transitions) == 4  # repeated statuses are not logged again


def test_failure_names_the_reason_and_where_the_logs_are(fake_kube):
    fake_kube.script["lmops-train-abc"] = [
        {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"},
        {"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "reason": "AppFailed",
         "message": "Job entrypoint command failed with exit code 1", "rayClusterName": "lmops-train-abc-raycluster-x1"},
    ]
    with pytest.raises(RayJobError) as e:
        submit_and_wait(_manifest(), timeout_s=30, poll_s=0.01, log=lambda s: None, client=fake_kube.client)
    msg = str(e.value)
    assert "RayJob default/lmops-train-abc failed: AppFailed: Job entrypoint command failed with exit code 1" in msg
    assert "deployment Failed, job FAILED" in msg and "kubectl logs -n default job/lmops-train-abc" in msg
    assert ("default", "lmops-train-abc") in fake_kube.objects  # kept for inspection


def test_timeout_deletes_the_job_unless_told_not_to(fake_kube):
    fake_kube.script["lmops-train-abc"] = [{"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}]
    lines: list[str] = []
    with pytest.raises(RayJobError, match=r"did not finish within 0s; last seen: deployment Running, job RUNNING\."
                                          r" Deleted it"):
        submit_and_wait(_manifest(), timeout_s=0.3, poll_s=0.05, log=lines.append, client=fake_kube.client)
    assert ("default", "lmops-train-abc") not in fake_kube.objects
    with pytest.raises(RayJobError, match="Left running: kubectl delete rayjob -n default lmops-train-abc"):
        submit_and_wait(_manifest(), timeout_s=0.3, poll_s=0.05, log=lines.append, client=fake_kube.client,
                        delete_on_timeout=False)
    assert ("default", "lmops-train-abc") in fake_kube.objects


def test_an_existing_job_is_reattached_reused_or_replaced(fake_kube):
    m = _manifest()
    key = ("default", "lmops-train-abc")
    done = {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}
    fake_kube.objects[key] = {**copy.deepcopy(m), "status": done}
    obj = submit_and_wait(m, timeout_s=5, poll_s=0.01, log=lambda s: None, client=fake_kube.client)
    assert obj["status"] == done and not [c for c in fake_kube.calls if c[0] == "PATCH"]  # not trained twice

    other = _manifest()
    other["spec"]["entrypoint"] += " --extra"
    fake_kube.objects[key] = {**copy.deepcopy(other), "status": {"jobDeploymentStatus": "Running",
                                                                 "jobStatus": "RUNNING"}}
    with pytest.raises(RayJobError, match="already exists and is running with a different entrypoint"):
        submit_and_wait(m, timeout_s=5, poll_s=0.01, log=lambda s: None, client=fake_kube.client)

    failed = {"jobDeploymentStatus": "Failed", "jobStatus": "FAILED"}
    fake_kube.objects[key] = {**copy.deepcopy(m), "status": failed}
    fake_kube.script["lmops-train-abc"] = [failed, done]
    lines: list[str] = []
    submit_and_wait(m, timeout_s=5, poll_s=0.01, log=lines.append, client=fake_kube.client)
    assert any("exists and is failed" in line and "deleting it to resubmit" in line for line in lines)
    assert ("DELETE", "/apis/ray.io/v1/namespaces/default/rayjobs/lmops-train-abc") in fake_kube.calls


def test_train_on_kuberay_renders_submits_and_returns_status_and_manifest(fake_kube):
    cfg = _cfg("train.num_workers=2", "kuberay.timeout_s=30", "kuberay.poll_s=0.01")
    fake_kube.script["lmops-train-run-7"] = [{"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"},
                                             {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}]
    lines: list[str] = []
    out = train_on_kuberay(cfg, TOKENS, CKPT, name="lmops-train-run-7", log=lines.append, client=fake_kube.client)
    assert out["name"] == "lmops-train-run-7" and out["namespace"] == "default"
    assert out["status"]["jobStatus"] == "SUCCEEDED"
    assert out["manifest"] == render_rayjob(cfg, name="lmops-train-run-7", tokens_uri=TOKENS, checkpoint_uri=CKPT)
    assert fake_kube.objects[("default", "lmops-train-run-7")]["spec"] == out["manifest"]["spec"]
    assert "submitted (2 worker pod(s) x 1 GPU)" in lines[0]


def test_kube_get_and_delete(fake_kube):
    assert kube.get("ray.io/v1", "RayJob", "nope", "default", client=fake_kube.client) is None
    assert kube.delete("ray.io/v1", "RayJob", "nope", "default", client=fake_kube.client) is False
    kube.apply(_manifest("there"), client=fake_kube.client)
    assert kube.get("ray.io/v1", "RayJob", "there", "default", client=fake_kube.client)["metadata"]["uid"] == "u-1"
    assert kube.delete("ray.io/v1", "RayJob", "there", "default", client=fake_kube.client) is True
    assert kube.get("ray.io/v1", "RayJob", "there", "default", client=fake_kube.client) is None


def test_missing_crd_and_unreachable_api_server_are_clear_errors():
    server = FakeKube(with_crd=False)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(kube.KubeError, match="does not know ray.io/v1 RayJob.*CRD installed"):
            submit_and_wait(_manifest(), timeout_s=5, poll_s=0.01, log=lambda s: None, client=server.client)
        dead = server.client
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(kube.KubeError, match="RayJob default/x: cannot reach the Kubernetes API server"):
        kube.get("ray.io/v1", "RayJob", "x", "default", client=dead)


# ---------------------------------------------------------------- the entrypoint's staging and run
def test_token_staging_errors_name_the_uri(s3, tmp_path, monkeypatch):
    _, bucket = s3
    with pytest.raises(LmopsError, match="--tokens /nope/tokens: directory not found"):
        rayjob.stage_tokens("/nope/tokens", tmp_path / "t")
    with pytest.raises(storage.StorageError, match=f"--tokens: cannot fetch .*s3://{bucket}/missing/"):
        rayjob.stage_tokens(f"s3://{bucket}/missing", tmp_path / "t")
    monkeypatch.setenv("LMOPS_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    with pytest.raises(storage.StorageError, match="cannot reach the S3 endpoint"):
        rayjob.stage_tokens(f"s3://{bucket}/tokens", tmp_path / "t")


def test_publish_checkpoint_uploads_the_tree_with_its_manifest(s3, tmp_path):
    _, bucket = s3
    src = tmp_path / "ckpt"
    (src / "tokenizer").mkdir(parents=True)
    (src / "config.json").write_text("{}")
    (src / "tokenizer" / "tokenizer.json").write_text('{"v": 1}')
    (src / "manifest.json").write_text('{"stage": "train"}')
    uri = f"s3://{bucket}/run-1/checkpoint"
    rayjob.publish_checkpoint(src, uri)
    got = {e.uri[len(uri) + 1:]: storage.read_bytes(e.uri) for e in storage.list_files(uri)}
    assert got == {"config.json": b"{}", "manifest.json": b'{"stage": "train"}',
                   "tokenizer/tokenizer.json": b'{"v": 1}'}


@pytest.mark.slow
def test_entrypoint_trains_from_s3_tokens_into_an_s3_checkpoint(s3, ray_runtime, tiny_tokens, tmp_path):
    """`python -m lmops.train.rayjob run` as the head pod runs it, with the local Ray standing in for the
    job's cluster (Ray storage stays local: this Ray's workers were started without the S3 settings)."""
    _, bucket = s3
    tokens_uri, out_uri = f"s3://{bucket}/run-1/tokens", f"s3://{bucket}/run-1/checkpoint"
    storage.upload_dir(tiny_tokens, tokens_uri)
    cfg = config_from_dict({"workdir": str(tmp_path), "cache_dir": None, "kuberay": {"gpus_per_worker": 0},
                            "train": {"max_steps": 4, "micro_batch_size": 2, "block_size": 32, "eval_every": 4,
                                      "eval_batches": 1, "log_every": 2, "checkpoint_every": 4, "warmup_steps": 1,
                                      "storage_path": str(tmp_path / "ray")}})
    b64 = rayjob.encode_config(cfg)
    assert rayjob.main(["run", "--tokens", tokens_uri, "--out", out_uri, "--config-b64", b64]) == 0
    local = storage.download_dir(out_uri, tmp_path / "fetched")
    from lmops.manifest import read_manifest, verify

    m = read_manifest(local, "train")
    verify(local, "train")
    assert m.metrics["steps"] == 4 and (local / "config.json").is_file()
    # a second run with missing tokens fails with a message, not a traceback
    assert rayjob.main(["run", "--tokens", f"s3://{bucket}/nope", "--out", out_uri, "--config-b64", b64]) == 1
