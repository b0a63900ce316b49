"""The KubeRay training launch without a cluster: the RayJob manifest against KubeRay's full CRD schema
(strict, list-map keys), its pods against Kubernetes 1.30+ and the restricted Pod Security Standard
(tests/rendered_checks.py), the decision on KubeRay's status, and the entrypoint's staging through a real S3
endpoint (moto). Submitting and waiting, against the real API server: test_rayjob_cluster.py."""

from __future__ import annotations

import base64
import copy
import json
import re
import shlex

import pytest
import yaml

from lmops import storage
from lmops.config import ConfigError, load_config
from lmops.errors import LmopsError
from lmops.train import rayjob
from lmops.train.kuberay.ray_version import RAY_VERSION
from lmops.train.rayjob import (
    cluster_config,
    decode_config,
    rayjob_outcome,
    render_rayjob,
)
from rendered_checks import assert_valid, rendered_problems

TOKENS, CKPT = "s3://lmops-artifacts/run-7/tokens", "s3://lmops-artifacts/run-7/checkpoint"


def validate(manifest: dict) -> None:
    assert_valid(manifest)


def _cfg(*overrides: str):
    return load_config("micro", list(overrides))


def _gpu_job():
    cfg = _cfg("train.num_workers=4", "kuberay.gpus_per_worker=2", "kuberay.namespace=ml",
               "image.repository=registry.local/lmops", "image.tag=v1.2", "kuberay.service_account=trainer",
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
    # the image's Ray (the lock's), not whichever Ray the rendering process has
    assert spec["rayClusterSpec"]["rayVersion"] == RAY_VERSION
    (group,) = spec["rayClusterSpec"]["workerGroupSpecs"]
    assert group["groupName"] == "gpu-workers" and group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 4
    pod = group["template"]["spec"]
    (worker,) = pod["containers"]
    assert worker["image"] == "registry.local/lmops:v1.2-cuda"
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
                       (["image.pull_policy=Sometimes"], "image.pull_policy: expected one of"),
                       (["kuberay.image=x"], "kuberay.image: unknown key"),
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
    string_gpus = copy.deepcopy(good)
    group(string_gpus)["template"]["spec"]["tolerations"][0]["tolerationSeconds"] = "forever"
    twice = copy.deepcopy(good)
    group(twice)["template"]["spec"]["containers"][0]["env"].append({"name": "PYTHONUNBUFFERED", "value": "0"})
    writable = copy.deepcopy(good)
    del group(writable)["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"]
    for broken, expected in ((typo, "minReplica"), (bad_quantity, "32 gigs"),
                             (string_gpus, "forever"), (twice, "duplicate entry (name='PYTHONUNBUFFERED'"),
                             (writable, "readOnlyRootFilesystem must be true")):
        problems = "\n".join(rendered_problems(broken))
        assert expected in problems, problems


def test_every_pod_is_restricted_with_emptydirs_where_ray_writes():
    _, m = _gpu_job()
    spec = m["spec"]
    pods = {"head": spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"],
            "worker": spec["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"],
            "submitter": spec["submitterPodTemplate"]["spec"]}
    for name, pod in pods.items():
        assert pod["securityContext"]["runAsUser"] == 1000 and pod["securityContext"]["fsGroup"] == 1000, name
        (c,) = pod["containers"]
        assert c["securityContext"]["readOnlyRootFilesystem"] is True, name
    for name in ("head", "worker"):
        volumes = {v["name"]: v["emptyDir"] for v in pods[name]["volumes"]}
        assert volumes["dshm"] == {"medium": "Memory"}  # Ray's object store and torch's shared memory
        mounts = {m["mountPath"] for m in pods[name]["containers"][0]["volumeMounts"]}
        assert mounts == {"/tmp", "/tmp/ray", "/var/cache/lmops", "/dev/shm"}
    # KubeRay fills in the submitter's `ray job submit` command only when the template has none
    submitter = pods["submitter"]
    assert "command" not in submitter["containers"][0] and submitter["restartPolicy"] == "Never"
    assert submitter["containers"][0]["image"] == "registry.local/lmops:v1.2-cpu"
    assert pods["head"]["containers"][0]["image"] == "registry.local/lmops:v1.2-cpu"
    assert pods["worker"]["containers"][0]["image"] == "registry.local/lmops:v1.2-cuda"


def test_cpu_only_job_gets_cpu_workers_the_cpu_image_and_no_gpu_toleration():
    m = render_rayjob(_cfg("kuberay.gpus_per_worker=0"), name="cpu-run", tokens_uri=TOKENS, checkpoint_uri=CKPT)
    validate(m)
    (group,) = m["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert group["groupName"] == "cpu-workers"
    pod = group["template"]["spec"]
    assert pod["containers"][0]["image"].endswith("-cpu") and "tolerations" not in pod
    # tolerations given explicitly are kept, GPUs or not
    m = render_rayjob(_cfg("kuberay.gpus_per_worker=0", "kuberay.tolerations=[{key: pool, operator: Exists}]"),
                      name="cpu-run", tokens_uri=TOKENS, checkpoint_uri=CKPT)
    assert m["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["tolerations"] == [
        {"key": "pool", "operator": "Exists"}]


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
    # a Ray pod that cannot start ends the wait with its reason; one still being scheduled or pulled does not
    ({"jobDeploymentStatus": "Initializing", "rayClusterStatus": {"conditions": [
        {"type": "HeadPodReady", "status": "False", "reason": "ErrImageNeverPull",
         "message": 'container ray-head: Container image "x" is not present with pull policy of Never'}]}},
     "failed", "the Ray head pod cannot start: ErrImageNeverPull: container ray-head: Container image"),
    ({"jobDeploymentStatus": "Running", "rayClusterStatus": {
        "reason": "pod lm-abcde-cpu-workers-worker-x: CrashLoopBackOff: container ray-worker: back-off 20s; last exit:"
                  " OOMKilled (exit code 137)"}}, "failed", "a Ray pod cannot start: .*CrashLoopBackOff.*OOMKilled"),
    ({"jobDeploymentStatus": "Initializing", "rayClusterStatus": {"conditions": [
        {"type": "HeadPodReady", "status": "False", "reason": "ContainersNotReady", "message": "not ready"}],
        "reason": "pod lm-head-x: Unschedulable: 0/1 nodes are available: 1 Insufficient cpu."}}, "pending", None),
])
def test_rayjob_outcome(status, state, words):
    got, msg = rayjob_outcome(status)
    assert got == state
    if words:
        assert msg is not None and re.search(words, msg), msg
    elif state != "failed":
        assert msg is None


@pytest.mark.parametrize("status, backoff_limit, state, words", [
    # an attempt's Ray job failed before KubeRay counted it: with retries left, KubeRay goes Retrying
    ({"jobDeploymentStatus": "Running", "jobStatus": "FAILED", "message": "exit 1"}, 1, "running",
     "attempt 1 of 2 ended FAILED; KubeRay retries it .backoffLimit 1.: exit 1"),
    ({"jobDeploymentStatus": "Running", "jobStatus": "FAILED", "failed": 1}, 2, "running", "attempt 2 of 3"),
    # the last attempt's failure ends the wait, and says how many there were
    ({"jobDeploymentStatus": "Running", "jobStatus": "FAILED", "failed": 1, "message": "exit 1"}, 1, "failed",
     "^exit 1 .attempt 2 of 2.$"),
    ({"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "failed": 2, "reason": "AppFailed", "message": "exit 1"},
     1, "failed", "AppFailed: exit 1 .2 attempts failed."),
    ({"jobDeploymentStatus": "New", "failed": 1}, 1, "pending", None),
])
def test_rayjob_outcome_with_retries(status, backoff_limit, state, words):
    got, msg = rayjob_outcome(status, backoff_limit)
    assert got == state
    if words:
        assert msg is not None and re.search(words, msg), msg
    elif state != "failed":
        assert msg is None


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
