"""Submitting RayJobs and waiting for them on the real API server (`lmops cluster`), with the KubeRay stand-in
making the Ray cluster as pods of the lmops image on the node: success (the checkpoint arrives in S3), KubeRay's
reason on failure, a timeout (the job is deleted), KubeRay's deadline, re-attaching to a running job, KubeRay's
finalizer stopping a deleted job, and a ServiceAccount without rayjobs permissions; then what KubeRay does with
the pods: a worker pod killed mid-run is replaced and training resumes from the last checkpoint in S3,
shutdownAfterJobFinishes removes the cluster after the TTL, and a pod that cannot start fails the RayJob with the
pod's own reason (not a timeout)."""

from __future__ import annotations

import base64
import json
import re
import shlex
import sys
import time
import urllib.request

import pytest
from ray_pods import SMALL_PODS

from lmops import kube, storage
from lmops.config import config_from_dict
from lmops.train.rayjob import RayJobError, render_rayjob, submit_and_wait, train_on_kuberay

pytestmark = pytest.mark.cluster
API, KIND = "ray.io/v1", "RayJob"
SECRET = "s3-creds"  # the kube_s3_secret fixture's
HOLD = "lmops.dev/test-hold"


def _cfg(ns: str, tmp_path, env: dict | None = None, kuberay: dict | None = None, **train):
    return config_from_dict({
        "workdir": str(tmp_path), "cache_dir": None,
        "kuberay": {"namespace": ns, **SMALL_PODS, "env_from_secrets": [SECRET], "env": env or {},
                    "poll_s": 0.5, "timeout_s": 600, **(kuberay or {})},
        "train": {"num_workers": 1, "max_steps": 4, "micro_batch_size": 2, "block_size": 32, "eval_every": 4,
                  "eval_batches": 1, "log_every": 2, "checkpoint_every": 4, "warmup_steps": 1, **train}})


def _job(ns: str, tmp_path, name: str, command: str, **spec) -> dict:
    """A rendered RayJob whose entrypoint is replaced by ``command`` (a head pod alone: no worker pods)."""
    m = render_rayjob(_cfg(ns, tmp_path), name=name, tokens_uri="s3://b/tokens", checkpoint_uri="s3://b/ckpt")
    m["spec"]["entrypoint"] = command
    group = m["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    group["replicas"] = group["minReplicas"] = 0
    m["spec"].update(spec)
    return m


def _staged(s3, tokens, run: str) -> tuple[str, str]:
    """(tokens, checkpoint) URIs of a run in the test's bucket, the tokens uploaded."""
    _, bucket = s3
    storage.upload_dir(tokens, f"s3://{bucket}/{run}/tokens")
    return f"s3://{bucket}/{run}/tokens", f"s3://{bucket}/{run}/checkpoint"


def _python(code: str) -> str:
    return shlex.join(["python", "-c", code])


@pytest.mark.slow
def test_success_two_ray_pods_train_with_ddp_and_the_checkpoint_arrives(
        kube_cluster, node_image, kube_namespace, kube_s3_secret, s3, pod_s3_env, tiny_tokens, tmp_path):
    client, ns = kube_cluster.client(), kube_namespace
    tokens_uri, ckpt_uri = _staged(s3, tiny_tokens, "run-1")
    lines: list[str] = []
    cfg = _cfg(ns, tmp_path, pod_s3_env, {"head_ranks": 1})  # a rank on the head, one on the worker pod
    out = train_on_kuberay(cfg, tokens_uri, ckpt_uri, name="lmops-train-ok", log=lines.append, client=client)
    assert out["status"]["jobDeploymentStatus"] == "Complete" and out["status"]["jobStatus"] == "SUCCEEDED"
    assert out["status"]["startTime"] and out["status"]["endTime"]
    transitions = [line for line in lines if "->" in line]
    assert transitions[-1].startswith("[train] RayJob %s/lmops-train-ok: Running -> Complete (job SUCCEEDED)" % ns)
    from lmops.manifest import read_manifest, verify

    local = storage.download_dir(ckpt_uri, tmp_path / "fetched")
    verify(local, "train")
    assert read_manifest(local, "train").metrics["steps"] == 4 and (local / "config.json").is_file()


def test_failure_carries_kuberays_reason_and_the_jobs_last_lines(kube_cluster, node_image, kube_namespace,
                                                                 kube_s3_secret, s3, pod_s3_env, tmp_path):
    client, ns = kube_cluster.client(), kube_namespace
    _, bucket = s3
    with pytest.raises(RayJobError) as e:
        train_on_kuberay(_cfg(ns, tmp_path, pod_s3_env), f"s3://{bucket}/missing", f"s3://{bucket}/ckpt",
                         name="lmops-train-bad", log=lambda s: None, client=client)
    msg = str(e.value)
    # Ray's own message; lmops stops waiting at jobStatus FAILED, before or after KubeRay marks the deployment
    # Failed/AppFailed (which waits for the submitter's `ray job logs --follow` to end)
    assert re.search(f"RayJob {ns}/lmops-train-bad failed: (AppFailed: )?Job entrypoint command failed with exit code 1",
                     msg), msg
    assert "--tokens: cannot fetch the token shards" in msg and re.search(r"deployment (Running|Failed), job FAILED", msg)
    kube.wait_for(API, KIND, "lmops-train-bad", ns,  # kept for inspection, and KubeRay's verdict follows
                  lambda o: o and o["status"].get("reason") == "AppFailed" and o["status"]["jobDeploymentStatus"] == "Failed",
                  timeout_s=120, client=client)


def test_timeout_deletes_the_job_and_the_deadline_is_kuberays(kube_cluster, node_image, kube_namespace, kube_s3_secret,
                                                              tmp_path):
    client, ns = kube_cluster.client(), kube_namespace
    slow = _job(ns, tmp_path, "slow", _python("import time; time.sleep(60)"))
    # 3 s: the Ray head pod is not ready yet (KubeRay's readiness probe waits 10 s)
    with pytest.raises(RayJobError, match=r"did not finish within 3s; last seen: deployment Initializing, job \(none\)\."
                                          r" Deleted it"):
        submit_and_wait(slow, timeout_s=3, poll_s=0.2, log=lambda s: None, client=client)
    kube.wait_for(API, KIND, "slow", ns, lambda o: o is None, timeout_s=30, client=client)

    late = _job(ns, tmp_path, "late", _python("import time; time.sleep(60)"), activeDeadlineSeconds=2)
    with pytest.raises(RayJobError, match="failed: DeadlineExceeded: The RayJob has passed the activeDeadlineSeconds"):
        submit_and_wait(late, timeout_s=60, poll_s=0.2, log=lambda s: None, client=client)


def test_rerun_reattaches_to_the_running_job(kube_cluster, node_image, kube_namespace, kube_s3_secret, tmp_path):
    client, ns = kube_cluster.client(), kube_namespace
    job = _job(ns, tmp_path, "again", _python("import time; time.sleep(8)"))
    kube.apply(job, client=client)  # the first attempt of the train task, then the task is retried
    running = kube.wait_for(API, KIND, "again", ns, lambda o: o and (o.get("status") or {}).get("jobStatus") == "RUNNING",
                            timeout_s=180, client=client)
    lines: list[str] = []
    done = submit_and_wait(job, timeout_s=120, poll_s=0.2, log=lines.append, client=client)
    assert any(f"RayJob {ns}/again is already running; waiting for it" in line for line in lines)
    assert done["status"]["jobStatus"] == "SUCCEEDED"
    assert done["status"]["jobId"] == running["status"]["jobId"]  # the same run, not a second one
    # and once it succeeded, a third attempt does not train again
    lines.clear()
    assert submit_and_wait(job, timeout_s=10, poll_s=0.2, log=lines.append, client=client)["status"]["jobId"] == \
        running["status"]["jobId"]
    assert "already succeeded with this entrypoint; not training again" in lines[0]


def test_deleting_a_running_rayjob_stops_its_ray_job_before_it_goes(kube_cluster, node_image, kube_namespace,
                                                                    kube_s3_secret, tmp_path):
    """KubeRay's finalizer: the Ray job is stopped through the dashboard, then the RayJob goes. A hold on the
    RayCluster (a finalizer of the test's) keeps the head pod up after the RayJob is gone, so the dashboard
    can be asked: without the finalizer's stop the job would still be RUNNING there."""
    client, ns = kube_cluster.client(), kube_namespace
    kube.apply(_job(ns, tmp_path, "doomed", _python("import time; time.sleep(300)")), client=client)
    running = kube.wait_for(API, KIND, "doomed", ns,
                            lambda o: o and (o.get("status") or {}).get("jobStatus") == "RUNNING", timeout_s=180,
                            client=client)
    assert running["metadata"]["finalizers"] == ["ray.io/rayjob-finalizer"]
    status = running["status"]
    cluster = kube.get(API, "RayCluster", status["rayClusterName"], ns, client=client)
    assert kube.add_finalizer(cluster, HOLD, client=client)
    try:
        kube.delete(API, KIND, "doomed", ns, client=client)
        kube.wait_for(API, KIND, "doomed", ns, lambda o: o is None, timeout_s=60, client=client)
        url = f"http://{status['rayClusterStatus']['head']['podIP']}:8265/api/jobs/{status['jobId']}"
        deadline = time.monotonic() + 30
        while (state := json.loads(urllib.request.urlopen(url, timeout=5).read())["status"]) != "STOPPED" \
                and time.monotonic() < deadline:
            time.sleep(0.5)
        assert state == "STOPPED"
    finally:
        kube.remove_finalizers(API, "RayCluster", status["rayClusterName"], ns, prefix=HOLD, client=client)


def test_a_service_account_without_rayjobs_rights_gets_a_403_naming_the_role(kube_cluster, kube_namespace, tmp_path):
    admin, ns = kube_cluster.client(), kube_namespace
    kube.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "trainer", "namespace": ns}},
               client=admin)
    kube.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": "trainer", "namespace": ns},
                "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}]}, client=admin)
    kube.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "trainer", "namespace": ns},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "trainer"},
                "subjects": [{"kind": "ServiceAccount", "name": "trainer", "namespace": ns}]}, client=admin)
    sa = kube.wait_for("v1", "ServiceAccount", "trainer", ns, lambda o: o and o.get("secrets"), timeout_s=60,
                       client=admin)
    token = base64.b64decode(kube.get("v1", "Secret", sa["secrets"][0]["name"], ns, client=admin)["data"]["token"])
    trainer = kube_cluster.client(token.decode())
    assert kube.get("v1", "ConfigMap", "nope", ns, client=trainer) is None  # the token works
    with pytest.raises(kube.KubeError) as e:
        submit_and_wait(_job(ns, tmp_path, "denied", "true"), timeout_s=10, poll_s=0.2, log=lambda s: None,
                        client=trainer)
    msg = str(e.value)
    assert e.value.status == 403
    assert f"forbidden to get rayjobs.ray.io in namespace {ns}" in msg
    assert f"system:serviceaccount:{ns}:trainer" in msg and "A Role bound to this identity must grant verbs [get]" in msg


def test_the_api_server_refuses_an_invalid_rayjob_with_its_field_errors(kube_cluster, kube_namespace, tmp_path):
    job = _job(kube_namespace, tmp_path, "invalid", "true")
    job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "four"
    with pytest.raises(kube.KubeError, match=r"refused it as invalid: .*replicas.*integer") as e:
        submit_and_wait(job, timeout_s=10, poll_s=0.2, log=lambda s: None, client=kube_cluster.client())
    assert e.value.status == 422


def test_the_entrypoint_module_runs_as_a_command():
    import subprocess

    out = subprocess.run([sys.executable, "-m", "lmops.train.rayjob", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "run" in out.stdout


# ---------------------------------------------------------------- the Ray pods
RAY = "ray.io/v1"


def _pods(client, ns: str, node_type: str) -> list[dict]:
    pods, _ = kube.list_objects("v1", "Pod", ns, client=client)
    return [p for p in pods if (p["metadata"].get("labels") or {}).get("ray.io/node-type") == node_type
            and not p["metadata"].get("deletionTimestamp")]


def _submitter_log(client, ns: str, job: str) -> str:
    from kubernetes import client as k8s

    core = k8s.CoreV1Api(client)
    pods, _ = kube.list_objects("v1", "Pod", ns, client=client)
    names = [p["metadata"]["name"] for p in pods if (p["metadata"].get("labels") or {}).get("job-name") == job]
    return "\n".join(core.read_namespaced_pod_log(n, ns) for n in names)


@pytest.mark.slow
def test_a_worker_pod_killed_mid_run_is_replaced_and_training_resumes_from_the_checkpoint(
        kube_cluster, node_image, kube_namespace, kube_s3_secret, s3, pod_s3_env, tiny_tokens, tmp_path):
    client, ns = kube_cluster.client(), kube_namespace
    tokens_uri, ckpt_uri = _staged(s3, tiny_tokens, "kill")
    # enough steps that the run is still training when the worker goes (400 steps were over before the kill)
    cfg = _cfg(ns, tmp_path, pod_s3_env, {"head_ranks": 1}, max_steps=2000, checkpoint_every=100, eval_every=2000,
               log_every=100, micro_batch_size=8, block_size=64, max_failures=2)
    manifest = render_rayjob(cfg, name="lmops-kill", tokens_uri=tokens_uri, checkpoint_uri=ckpt_uri)
    kube.apply(manifest, client=client)
    # the first checkpoint in Ray Train's storage (S3) means the run is past step 4: kill the worker pod then
    ray_dir = f"{ckpt_uri}.ray/"
    deadline = time.monotonic() + 600
    while not any("checkpoint_" in key for key in (e.uri for e in storage.list_files(ray_dir, missing_ok=True))):
        assert time.monotonic() < deadline, "no checkpoint within 600 s"
        status = (kube.get(RAY, "RayJob", "lmops-kill", ns, client=client) or {}).get("status") or {}
        assert status.get("jobDeploymentStatus") not in ("Failed", "Complete"), status
        time.sleep(1)
    (worker,) = _pods(client, ns, "worker")
    kube.delete("v1", "Pod", worker["metadata"]["name"], ns, client=client)
    steps_done = sorted(e.uri for e in storage.list_files(ray_dir, missing_ok=True) if "checkpoint_" in e.uri)
    assert not storage.exists(f"{ckpt_uri}/manifest.json"), f"the run ended before the kill: {steps_done[-3:]}"
    done = submit_and_wait(manifest, timeout_s=900, poll_s=1, log=lambda s: None, client=client)
    assert done["status"]["jobStatus"] == "SUCCEEDED"
    (replacement,) = _pods(client, ns, "worker")
    assert replacement["metadata"]["name"] != worker["metadata"]["name"]  # the RayCluster made a new one
    from lmops.manifest import read_manifest

    local = storage.download_dir(ckpt_uri, tmp_path / "fetched")
    metrics = read_manifest(local, "train").metrics
    assert metrics["steps"] == 2000
    assert len(metrics["resumed_from"]) >= 1 and all(0 < s < 2000 and s % 100 == 0 for s in metrics["resumed_from"]), \
        (metrics["resumed_from"], _submitter_log(client, ns, "lmops-kill")[-3000:])
    assert "worker 0 of 2" in _submitter_log(client, ns, "lmops-kill")  # DDP across the head and the worker pod


def test_shutdown_after_job_finishes_removes_the_cluster_after_the_ttl(kube_cluster, node_image, kube_namespace,
                                                                      kube_s3_secret, tmp_path):
    client, ns = kube_cluster.client(), kube_namespace
    job = _job(ns, tmp_path, "ttl", _python("print('hello from the head pod')"), ttlSecondsAfterFinished=3)
    done = submit_and_wait(job, timeout_s=300, poll_s=0.5, log=lambda s: None, client=client)
    cluster = done["status"]["rayClusterName"]
    assert done["status"]["dashboardURL"] == f"{cluster}-head-svc.{ns}.svc.cluster.local:8265"
    assert kube.get(RAY, "RayCluster", cluster, ns, client=client) is not None  # kept for the TTL
    kube.wait_for(RAY, "RayCluster", cluster, ns, lambda o: o is None, timeout_s=60, client=client)
    kube.wait_for("v1", "Service", f"{cluster}-head-svc", ns, lambda o: o is None, timeout_s=60, client=client)
    deadline = time.monotonic() + 60
    while _pods(client, ns, "head"):
        assert time.monotonic() < deadline, "the head pod outlived its RayCluster"
        time.sleep(0.5)
    # the RayJob and its submitter Job stay: the Job's pod log holds the Ray job's output
    assert kube.get(RAY, "RayJob", "ttl", ns, client=client)["status"]["jobDeploymentStatus"] == "Complete"
    assert "hello from the head pod" in _submitter_log(client, ns, "ttl")


@pytest.mark.parametrize("broken, reason", [
    ("image", "ImagePullBackOff"),  # IfNotPresent: the kubelet tries the (unreachable) registry, then backs off
    ("secret", "CreateContainerConfigError"),
])
def test_a_ray_pod_that_cannot_start_fails_the_rayjob_with_its_reason(broken, reason, kube_cluster, node_image,
                                                                      kube_namespace, kube_s3_secret, tmp_path):
    client, ns = kube_cluster.client(), kube_namespace
    job = _job(ns, tmp_path, f"broken-{broken}", "true")
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    if broken == "image":
        head["image"] = "localhost/lmops:no-such-tag"
    else:
        head["env"].append({"name": "S3_KEY", "valueFrom": {"secretKeyRef": {"name": SECRET, "key": "no-such-key"}}})
    t0 = time.monotonic()
    with pytest.raises(RayJobError) as e:
        submit_and_wait(job, timeout_s=240, poll_s=0.5, log=lambda s: None, client=client)
    assert time.monotonic() - t0 < 200  # the pod's reason ended the wait, not the timeout
    msg = str(e.value)
    assert f"the Ray head pod cannot start: {reason}: " in msg
    if broken == "secret":
        assert "no-such-key" in msg
    status = kube.get(RAY, "RayJob", f"broken-{broken}", ns, client=client)["status"]
    (cond,) = [c for c in status["rayClusterStatus"]["conditions"] if c["type"] == "HeadPodReady"]
    assert cond["status"] == "False" and cond["reason"] == reason


def test_an_unschedulable_ray_pod_is_named_while_waiting_and_in_the_timeout(kube_cluster, node_image, kube_namespace,
                                                                            kube_s3_secret, tmp_path):
    """A head pod asking for more CPU than the node has stays Pending: KubeRay's status only says Initializing,
    so the wait reads the pod's FailedScheduling message, logs it and puts it in its timeout error. No pod runs."""
    client, ns = kube_cluster.client(), kube_namespace
    job = _job(ns, tmp_path, "too-big", "true")
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    head["resources"] = {"requests": {"cpu": "64", "memory": "1Gi"}, "limits": {"cpu": "64", "memory": "1Gi"}}
    lines: list[str] = []
    with pytest.raises(RayJobError) as e:
        submit_and_wait(job, timeout_s=20, poll_s=0.5, log=lines.append, client=client)
    msg = str(e.value)
    assert "did not finish within 20s" in msg and "Still Pending: pod too-big-" in msg, msg
    assert "cannot be scheduled: 0/1 nodes are available: 1 Insufficient cpu" in msg, msg
    logged = [line for line in lines if "cannot be scheduled" in line]
    assert len(logged) == 1 and "Insufficient cpu" in logged[0], lines  # once, not every poll


def test_backoff_limit_retries_with_a_new_ray_cluster_then_fails(kube_cluster, node_image, kube_namespace,
                                                                 kube_s3_secret, tmp_path):
    """backoffLimit 1: the failed Ray job is one attempt; KubeRay goes Retrying (the attempt's RayCluster and
    submitter deleted), a second attempt on a new Ray cluster fails too, then the RayJob is Failed with
    ``status.failed`` 2 -- and lmops' wait follows it to the end instead of stopping at the first failure."""
    client, ns = kube_cluster.client(), kube_namespace
    job = _job(ns, tmp_path, "flaky", _python("raise SystemExit('attempt failed')"), backoffLimit=1)
    lines: list[str] = []
    with pytest.raises(RayJobError) as e:
        submit_and_wait(job, timeout_s=400, poll_s=0.5, log=lines.append, client=client)
    # the last attempt's failed Ray job ends the wait (as without retries), before or after KubeRay's verdict
    assert re.search(r"\((attempt 2 of 2|2 attempts failed)\)", str(e.value)), str(e.value)
    status = kube.wait_for(API, KIND, "flaky", ns, lambda o: o and o["status"].get("jobDeploymentStatus") == "Failed",
                           timeout_s=120, client=client)["status"]
    assert status["reason"] == "AppFailed" and status["failed"] == 2 and not status.get("succeeded"), status
    assert any(re.search(r"Running -> (Retrying|New)", line) for line in lines), lines
    clusters = [re.search(r"ray cluster (\S+)", line).group(1) for line in lines if "ray cluster " in line]
    assert len(set(clusters)) == 2, lines  # each attempt had its own Ray cluster
    assert kube.get(RAY, "RayCluster", clusters[0], ns, client=client) is None  # the first one deleted
