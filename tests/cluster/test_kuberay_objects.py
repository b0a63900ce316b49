"""The objects the KubeRay stand-in makes for lmops' rendered RayJob, against KubeRay's own shapes (v1.7,
ray-operator/controllers/ray/common/pod.go, service.go, job.go and rayjob_controller.go): what is rendered is kept,
what KubeRay injects is injected. No cluster needed: the builders are pure."""

from __future__ import annotations

import pytest

from lmops.cluster import kuberay_objects as ko
from lmops.config import config_from_dict
from lmops.security.restricted import violations
from lmops.train.rayjob import render_rayjob

NS, CLUSTER = "team", "lm-abcde"
FQDN = f"{CLUSTER}-head-svc.{NS}.svc.cluster.local"


@pytest.fixture
def objects():
    cfg = config_from_dict({"kuberay": {"namespace": NS, "gpus_per_worker": 1, "worker_cpu": "4", "worker_memory": "16Gi",
                                        "env_from_secrets": ["s3-creds"], "env": {"LMOPS_X": "1"},
                                        "node_selector": {"pool": "gpu"}},
                            "train": {"num_workers": 2}})
    job = render_rayjob(cfg, name="lm", tokens_uri="s3://b/t", checkpoint_uri="s3://b/c")
    job["metadata"]["uid"] = "job-uid"
    cluster = ko.ray_cluster(job, CLUSTER)
    cluster["metadata"]["uid"] = "cluster-uid"
    return job, cluster


def _env(container):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_the_raycluster_is_the_rayjobs_spec_owned_by_the_rayjob(objects):
    job, cluster = objects
    assert cluster["spec"] == job["spec"]["rayClusterSpec"]
    labels = cluster["metadata"]["labels"]
    assert labels["ray.io/originated-from-cr-name"] == "lm" and labels["ray.io/originated-from-crd"] == "RayJob"
    assert labels["ray.io/job-submission-mode"] == "K8sJobMode" and labels["lmops.dev/rayjob"] == "lm"
    (owner,) = cluster["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("RayJob", "job-uid", True)


def test_head_pod_keeps_what_lmops_rendered_and_gets_kubrays_ray_start(objects):
    job, cluster = objects
    rendered = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    pod = ko.head_pod(cluster)
    spec, (c,) = pod["spec"], pod["spec"]["containers"]
    assert pod["metadata"]["generateName"] == f"{CLUSTER}-head-"
    assert {"ray.io/node-type": "head", "ray.io/group": "headgroup", "ray.io/cluster": CLUSTER,
            "ray.io/is-ray-node": "yes", "ray.io/identifier": f"{CLUSTER}-head",
            "app.kubernetes.io/created-by": "kuberay-operator", "lmops.dev/rayjob": "lm"}.items() \
        <= pod["metadata"]["labels"].items()
    assert pod["metadata"]["ownerReferences"][0]["uid"] == "cluster-uid"
    # rendered: image, resources, envFrom, volumes, security contexts
    assert c["image"] == rendered["containers"][0]["image"] and c["resources"] == rendered["containers"][0]["resources"]
    assert c["envFrom"] == [{"secretRef": {"name": "s3-creds"}}] and spec["volumes"] == rendered["volumes"]
    assert spec["securityContext"] == rendered["securityContext"] and c["securityContext"]["readOnlyRootFilesystem"]
    assert violations(spec) == []
    # injected: KubeRay's command, its flags from rayStartParams and the limits, sorted
    assert c["command"] == ["/bin/bash", "-c", "--"]
    (args,) = c["args"]
    assert args == ("ulimit -n ${RAY_START_ULIMIT_OPEN_FILES:-65536}; ray start --head  --block "
                    " --dashboard-agent-listen-port=52365  --dashboard-host=0.0.0.0  --memory=8589934592 "
                    " --metrics-export-port=8080  --num-cpus=0 ")
    env = _env(c)
    assert env["KUBERAY_GEN_RAY_START_CMD"] == args.split("; ", 1)[1]
    assert env["RAY_ADDRESS"] == "127.0.0.1:6379" and env["RAY_PORT"] == "6379" and env["LMOPS_X"] == "1"
    assert env["RAY_CLUSTER_NAME"] == {"fieldRef": {"fieldPath": "metadata.labels['ray.io/cluster']"}}
    assert "FQ_RAY_IP" not in env
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"gcs-server": 6379, "dashboard": 8265,
                                                                    "client": 10001, "metrics": 8080}
    # Ray >= 2.53: one HTTP health check on the dashboard agent, KubeRay's timings for a head
    assert c["readinessProbe"] == {"httpGet": {"path": "/api/healthz", "port": 52365}, "initialDelaySeconds": 10,
                                   "timeoutSeconds": 5, "periodSeconds": 5, "successThreshold": 1,
                                   "failureThreshold": 10}
    assert c["livenessProbe"]["failureThreshold"] == 120 and c["livenessProbe"]["initialDelaySeconds"] == 30
    # lmops mounts its own /dev/shm: KubeRay's shared-mem emptyDir is not added twice
    assert [m["mountPath"] for m in c["volumeMounts"]].count("/dev/shm") == 1


def test_worker_pods_join_the_head_service_after_waiting_for_gcs(objects):
    job, cluster = objects
    group = cluster["spec"]["workerGroupSpecs"][0]
    pod = ko.worker_pod(cluster, group)
    spec, (c,) = pod["spec"], pod["spec"]["containers"]
    assert pod["metadata"]["generateName"] == f"{CLUSTER}-gpu-workers-worker-"
    assert pod["metadata"]["labels"]["ray.io/group"] == "gpu-workers"
    assert spec["nodeSelector"] == {"pool": "gpu"}
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    (args,) = c["args"]
    assert f" --address={FQDN}:6379 " in args and " --num-cpus=4 " in args and " --num-gpus=1 " in args
    assert " --memory=17179869184 " in args and "--head" not in args
    env = _env(c)
    assert env["RAY_ADDRESS"] == f"{FQDN}:6379" and env["FQ_RAY_IP"] == FQDN and env["RAY_IP"] == f"{CLUSTER}-head-svc"
    (init,) = spec["initContainers"]
    assert init["name"] == "wait-gcs-ready" and init["image"] == c["image"]
    assert f"ray health-check --address {FQDN}:6379" in init["args"][0]
    assert init["resources"]["limits"] == {"cpu": "200m", "memory": "256Mi"}
    assert init["securityContext"] == c["securityContext"] and _env(init)["FQ_RAY_IP"] == FQDN
    assert c["readinessProbe"]["timeoutSeconds"] == 2
    assert violations(spec) == []


def test_head_services_are_headless_and_name_the_cluster_and_the_job(objects):
    job, cluster = objects
    svc = ko.head_service(cluster)
    assert svc["metadata"]["name"] == f"{CLUSTER}-head-svc"
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"]["ray.io/cluster"] == CLUSTER and svc["spec"]["selector"]["ray.io/node-type"] == "head"
    assert [(p["name"], p["port"]) for p in svc["spec"]["ports"]] == [
        ("client", 10001), ("dashboard", 8265), ("gcs-server", 6379), ("metrics", 8080)]
    job_svc = ko.head_service(cluster, name="lm-head-svc", owner=job, labels={"ray.io/originated-from-cr-name": "lm"})
    assert job_svc["metadata"]["name"] == "lm-head-svc" and job_svc["metadata"]["ownerReferences"][0]["kind"] == "RayJob"
    assert job_svc["spec"]["selector"] == svc["spec"]["selector"]


def test_the_submitter_is_the_rendered_template_running_kuberays_ray_job_submit(objects):
    job, cluster = objects
    job["status"] = {"dashboardURL": f"{FQDN}:8265", "jobId": "lm-x7k2p"}
    sub = ko.submitter_job(job, cluster)
    assert sub["metadata"]["name"] == "lm" and sub["spec"]["backoffLimit"] == 2
    assert sub["metadata"]["ownerReferences"][0]["kind"] == "RayJob"
    rendered = job["spec"]["submitterPodTemplate"]
    spec, (c,) = sub["spec"]["template"]["spec"], sub["spec"]["template"]["spec"]["containers"]
    assert spec["securityContext"] == rendered["spec"]["securityContext"] and spec["restartPolicy"] == "Never"
    assert c["resources"] == rendered["spec"]["containers"][0]["resources"]
    assert c["command"] == ["/bin/bash", "-ce", "--"]
    (cmd,) = c["args"]
    address = f"http://{FQDN}:8265"
    assert cmd.startswith(f"until python -c \"import urllib.request; r=urllib.request.urlopen('{address}/api/gcs_healthz'")
    assert f"if ! ray job status --address {address} lm-x7k2p >/dev/null 2>&1 ; then ray job submit --address {address}" \
           f" --no-wait --submission-id lm-x7k2p -- python -m lmops.train.rayjob run" in cmd
    assert cmd.endswith(f" ; fi ; ray job logs --address {address} --follow lm-x7k2p")
    env = _env(c)
    assert env["RAY_DASHBOARD_ADDRESS"] == f"{FQDN}:8265" and env["RAY_JOB_SUBMISSION_ID"] == "lm-x7k2p"
    assert sub["spec"]["template"]["metadata"]["labels"]["ray.io/originated-from-crd"] == "RayJob"
    assert violations(spec) == []


def test_ray_start_derives_cpus_from_the_limit_rounded_up_and_keeps_explicit_params():
    res = {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "1500m", "memory": "1Gi"}}
    cmd = ko.ray_start_command("worker", {"num-cpus": "3", "block": "true", "log-color": "false"}, res)
    assert cmd == "ray start  --block  --log-color=false  --memory=1073741824  --num-cpus=3 "
    assert " --num-cpus=2 " in ko.ray_start_command("worker", {}, res)
    assert " --num-cpus=1 " in ko.ray_start_command("worker", {}, {"requests": {"cpu": "500m"}})
