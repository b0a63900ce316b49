"""Submitting RayJobs and waiting for them on the real API server (`lmops cluster`), with the KubeRay stand-in
making the Ray cluster as pods of the lmops image on the node: success (the checkpoint arrives in S3), KubeRay's
reason on failure, a timeout (the job is deleted), KubeRay's deadline, re-attaching to a running job, and a
ServiceAccount without rayjobs permissions."""

from __future__ import annotations

import base64
import shlex
import sys

import pytest

from lmops import kube, storage
from lmops.config import config_from_dict
from lmops.train.rayjob import RayJobError, render_rayjob, submit_and_wait, train_on_kuberay

pytestmark = pytest.mark.cluster
API, KIND = "ray.io/v1", "RayJob"
SECRET = "s3-creds"  # the kube_s3_secret fixture's
# Ray pods that fit the one 2-core node beside the submitter (500m): CPU requests below the limits, and one
# training rank on the head (head_ranks) so that a head and one worker pod make a two-node DDP run.
SMALL_PODS = {"gpus_per_worker": 0, "head_cpu": "1", "head_cpu_request": "500m", "worker_cpu": "1",
              "worker_cpu_request": "500m", "head_memory": "3Gi", "worker_memory": "2Gi"}


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


def _python(code: str) -> str:
    return shlex.join(["python", "-c", code])


@pytest.mark.slow
def test_success_two_ray_pods_train_with_ddp_and_the_checkpoint_arrives(
        kube_cluster, lmops_image, kube_namespace, kube_s3_secret, s3, pod_s3_env, tiny_tokens, tmp_path):
    client, ns = kube_cluster.client(), kube_namespace
    _, bucket = s3
    tokens_uri, ckpt_uri = f"s3://{bucket}/run-1/tokens", f"s3://{bucket}/run-1/checkpoint"
    storage.upload_dir(tiny_tokens, tokens_uri)
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


def test_failure_carries_kuberays_reason_and_the_jobs_last_lines(kube_cluster, lmops_image, kube_namespace,
                                                                 kube_s3_secret, s3, pod_s3_env, tmp_path):
    client, ns = kube_cluster.client(), kube_namespace
    _, bucket = s3
    with pytest.raises(RayJobError) as e:
        train_on_kuberay(_cfg(ns, tmp_path, pod_s3_env), f"s3://{bucket}/missing", f"s3://{bucket}/ckpt", name="lmops-train-bad",
                         log=lambda s: None, client=client)
    msg = str(e.value)
    assert f"RayJob {ns}/lmops-train-bad failed: AppFailed: Job entrypoint command failed with exit code 1" in msg
    assert "--tokens: cannot fetch the token shards" in msg and "deployment Failed, job FAILED" in msg
    assert kube.get(API, KIND, "lmops-train-bad", ns, client=client) is not None  # kept for inspection


def test_timeout_deletes_the_job_and_the_deadline_is_kuberays(kube_cluster, lmops_image, kube_namespace, kube_s3_secret,
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


def test_rerun_reattaches_to_the_running_job(kube_cluster, lmops_image, kube_namespace, kube_s3_secret, tmp_path):
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
