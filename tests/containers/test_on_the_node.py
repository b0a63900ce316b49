"""The lmops image as pods on the node of `lmops cluster`: loaded into the node's containerd, the operator and the
chart's MLflow installed by `helm install helm/lmops` (non-root, read-only root, probes, in-cluster credentials),
a ModelDeployment reconciled by the operator in its pod, `helm upgrade` rolling it and `helm uninstall` removing
what the chart made."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest
import yaml

from node_pods import wait_phase, why

from lmops import kube
from lmops.cluster import node_images

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "lmops"

pytestmark = pytest.mark.cluster


def test_a_second_load_is_skipped_when_the_node_has_the_image(kube_cluster, engine, node_image):
    again = node_images.load(Path(kube_cluster.folder), node_image, engine)
    assert again.skipped and again.image_id == engine.run("image", "inspect", "--format", "{{.Id}}", node_image).stdout.strip()


def _helm(kube_cluster, namespace: str):
    import helm_python as helm

    return helm.Config(kubeconfig_path=kube_cluster.kubeconfig, namespace=namespace)


def _operator_pods(client, namespace: str) -> list[dict]:
    pods, _ = kube.list_objects("v1", "Pod", namespace, client=client)
    return [p for p in pods if p["metadata"].get("labels", {}).get("app.kubernetes.io/name") == "lmops-operator"
            and not p["metadata"].get("deletionTimestamp")]


def _ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


def _wait_rolled_out(client, namespace: str, name: str, timeout_s: float = 240) -> dict:
    """The Deployment's latest generation observed and its one replica updated and available."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        d = kube.get("apps/v1", "Deployment", name, namespace, client=client)
        st = d.get("status", {})
        if (st.get("observedGeneration") == d["metadata"]["generation"] and st.get("updatedReplicas") == 1
                and st.get("availableReplicas") == 1 and st.get("replicas") == 1):
            return d
        time.sleep(1)
    pods, _ = kube.list_objects("v1", "Pod", namespace, client=client)
    raise AssertionError(f"{name} not rolled out: {d.get('status')}\n"
                         + "\n\n".join(why(client, p["metadata"]["name"], namespace, p) for p in pods))


def test_the_operator_from_the_helm_chart_runs_reconciles_and_upgrades(kube_cluster, kube_namespace, node_image):
    client, ns = kube_cluster.client(), kube_namespace
    # the webhook's HMAC secret, referenced by the operator's env (the chart never holds secrets)
    kube.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "lmops-webhook", "namespace": ns},
                "data": {"secret": base64.b64encode(b"hmac-secret").decode()}}, client=client)
    helm = _helm(kube_cluster, ns)
    release = helm.install(str(CHART), "lmops", {"mlflow": {"enabled": True}}, namespace=ns, wait="watcher", timeout=300)
    assert release.get("status", release.get("info", {}).get("status")) == "deployed", {k: v for k, v in release.items()
                                                                                     if k != "manifest"}
    _wait_rolled_out(client, ns, "lmops-operator")
    _wait_rolled_out(client, ns, "lmops-mlflow")
    [pod] = _operator_pods(client, ns)
    assert _ready(pod), why(client, pod["metadata"]["name"], ns, pod)
    spec = pod["spec"]
    assert spec["serviceAccountName"] == "lmops-operator" and spec["containers"][0]["image"] == node_image
    assert spec["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True

    # kubectl logs reaches the kubelet; the operator logged in with its own ServiceAccount (in-cluster)
    from kubernetes import client as k8s

    log = k8s.CoreV1Api(client).read_namespaced_pod_log(pod["metadata"]["name"], ns)
    assert "Activity 'login_via_client' succeeded" in log, log[-2000:]

    # a ModelDeployment applied with kubectl is reconciled by the operator in its pod, which asked the chart's
    # MLflow (through the `mlflow` Service's name) for the alias: not set yet
    md = yaml.safe_load((REPO / "manifests" / "samples" / "modeldeployment.yaml").read_text())
    md["metadata"]["namespace"] = ns
    kube.apply(md, client=client)
    done = kube.wait_for("lmops.dev/v1alpha1", "ModelDeployment", md["metadata"]["name"], ns,
                         lambda o: o and o.get("status", {}).get("observedGeneration") == 1, timeout_s=120, client=client)
    ready = {c["type"]: c for c in done["status"]["conditions"]}["Ready"]
    assert ready["reason"] == "NoVersion", done["status"]

    # helm upgrade with a changed value rolls the Deployment: a new pod with the new setting
    old = pod["metadata"]["name"]
    helm.upgrade(str(CHART), "lmops", {"mlflow": {"enabled": True}, "operator": {"pollSeconds": 15}}, namespace=ns,
                 wait="watcher", timeout=300)
    _wait_rolled_out(client, ns, "lmops-operator")
    deadline = time.monotonic() + 120
    while [p["metadata"]["name"] for p in _operator_pods(client, ns)] in ([old], []) or len(_operator_pods(client, ns)) != 1:
        assert time.monotonic() < deadline, "the upgrade did not replace the operator pod"
        time.sleep(1)
    [new] = _operator_pods(client, ns)
    args = new["spec"]["containers"][0]["args"]
    assert args[args.index("--poll-seconds") + 1] == "15"
    wait_phase(client, new["metadata"]["name"], ns, ("Running",))

    # helm uninstall removes what the chart made (its CRDs stay, as Helm keeps crds/)
    helm.uninstall("lmops", wait="watcher", timeout=300)
    for api, kind in (("apps/v1", "Deployment"), ("v1", "Service"), ("rbac.authorization.k8s.io/v1", "Role"),
                      ("rbac.authorization.k8s.io/v1", "RoleBinding")):
        left, _ = kube.list_objects(api, kind, ns, client=client)
        assert [o["metadata"]["name"] for o in left] == [], kind
    sas, _ = kube.list_objects("v1", "ServiceAccount", ns, client=client)
    assert [s["metadata"]["name"] for s in sas] == ["default"]
    assert kube.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", "modeldeployments.lmops.dev", None,
                    client=client) is not None
    # its post-delete hook released the operator's finalizer once the operator's pod was gone: the ModelDeployment stays, and can now be deleted
    left = kube.get("lmops.dev/v1alpha1", "ModelDeployment", md["metadata"]["name"], ns, client=client)
    assert not [f for f in left["metadata"].get("finalizers") or [] if f.startswith("lmops.dev/")], left["metadata"]
    kube.delete("lmops.dev/v1alpha1", "ModelDeployment", md["metadata"]["name"], ns, client=client)
    kube.wait_for("lmops.dev/v1alpha1", "ModelDeployment", md["metadata"]["name"], ns, lambda o: o is None,
                  timeout_s=30, client=client)


def test_the_inference_service_predictor_runs_as_a_pod_and_serves(kube_cluster, kube_namespace, node_image,
                                                                 tiny_model_dir, tmp_path_factory):
    """The lmops predictor container exactly as rendered for KServe (image, command, probes, resources, security
    context, volumes), as a bare pod; /mnt/models is what KServe's storage initializer would have written, here a
    read-only hostPath copy of a tiny model (the KServe stand-in's own pods, storage initializer included, are
    tests/cluster/test_kserve_standin.py's)."""
    import json
    import shutil
    import tempfile
    import urllib.request

    from lmops.config import DeployConfig, ServeConfig
    from lmops.serve.inference_service import MODEL_MOUNT, PORT, render_inference_service

    client, ns = kube_cluster.client(), kube_namespace
    cfg = DeployConfig(name="tiny", namespace=ns, storage_uri="s3://models/tiny",
                       resources={"cpu": "1", "memory": "2Gi"})
    predictor = render_inference_service(cfg, ServeConfig(), "s3://models/tiny")["spec"]["predictor"]
    [container] = predictor["containers"]
    assert container["image"] == node_image
    # the model where the storage initializer puts it, readable by the pod's non-root user
    models = Path(tempfile.mkdtemp(prefix="lmops-models-"))
    try:
        models.chmod(0o755)
        shutil.copytree(tiny_model_dir, models / "m")
        for p in (models / "m").rglob("*"):
            p.chmod(0o755 if p.is_dir() else 0o644)
        container["volumeMounts"] = container.get("volumeMounts", []) + [
            {"name": "model", "mountPath": MODEL_MOUNT, "readOnly": True}]
        spec = {k: v for k, v in predictor.items() if k not in ("minReplicas", "maxReplicas", "containers")}
        spec["volumes"] = spec.get("volumes", []) + [{"name": "model", "hostPath": {"path": str(models / "m")}}]
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor", "namespace": ns},
               "spec": {**spec, "containers": [container], "restartPolicy": "Never"}}
        kube.apply(pod, client=client)
        deadline = time.monotonic() + 180
        while True:
            got = kube.get("v1", "Pod", "predictor", ns, client=client)
            if _ready(got):
                break
            assert got["status"].get("phase") not in ("Failed", "Succeeded") and time.monotonic() < deadline, \
                why(client, "predictor", ns, got)
            time.sleep(1)
        # its readiness probe passed; now a completion over the pod network (the pod's own address)
        url = f"http://{got['status']['podIP']}:{PORT}/v1/completions"
        body = json.dumps({"model": "tiny", "prompt": "def add(a, b):", "max_tokens": 4, "temperature": 0}).encode()
        req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            out = json.loads(resp.read())
        assert out["choices"][0]["text"] and out["usage"]["completion_tokens"] == 4, out
    finally:
        kube.delete("v1", "Pod", "predictor", ns, client=client)
        shutil.rmtree(models, ignore_errors=True)


def test_a_kfp_task_pod_of_the_compiled_pipeline_runs_its_stage(kube_cluster, kube_namespace, node_image):
    """The build task as Kubeflow Pipelines would run it, from the compiled YAML a user uploads: its container
    command and args with kfp's placeholders resolved by kfp's own code (the executor input Kubeflow's driver
    writes), its resources, security context (plus what Kubeflow adds to every task), emptyDirs and S3 Secret
    by reference; the stage's real code on a tiny corpus, its outputs on a hostPath (Kubeflow's are in S3)."""
    import os
    import shutil
    import tempfile

    from google.protobuf import json_format
    from kfp.local import executor_input_utils, placeholder_utils
    from kfp.pipeline_spec import pipeline_spec_pb2

    from lmops.config import load_config
    from lmops.pipeline.compile import PIPELINE_YAML

    client, ns = kube_cluster.client(), kube_namespace
    spec, platform = list(yaml.safe_load_all(PIPELINE_YAML.read_text()))
    container = spec["deploymentSpec"]["executors"]["exec-build"]["container"]
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-build"]
    component = json_format.ParseDict(spec["components"]["comp-build"], pipeline_spec_pb2.ComponentSpec())

    root = Path(tempfile.mkdtemp(prefix="lmops-kfp-task-"))
    try:
        (root / "inputs").mkdir()
        import random

        words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda omicron sigma tau upsilon".split()
        for i in range(40):  # 30 distinct documents, 10 of them twice (the build keeps one of each)
            rng = random.Random(i % 30)
            (root / "inputs" / f"doc{i}.txt").write_text(" ".join(rng.choice(words) for _ in range(120)) + "\n")
        (root / "outputs").mkdir()
        for p in [root, *root.rglob("*")]:
            os.chown(p, 1000, 1000)
        cfg = load_config("micro").model_dump(mode="json")
        cfg["build"]["sources"] = ["/inputs"]
        cfg["cache_dir"] = "/var/cache/lmops"
        task_root = "/outputs/build"
        executor_input = executor_input_utils.construct_executor_input(
            component, {"config": yaml.safe_dump(cfg), "launcher": "local"}, task_root, block_input_artifact=True)
        command = placeholder_utils.replace_placeholders(
            container["command"] + container["args"],
            executor_input_utils.executor_input_to_dict(executor_input, component),
            pipeline_resource_name="lmops-pipeline-node-test", task_resource_name="build", pipeline_root="/outputs",
            unique_pipeline_id="node-test")
        res = container["resources"]
        secret = k8s["secretAsEnv"][0]
        kube.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": secret["secretName"], "namespace": ns},
                    "stringData": {m["secretKey"]: "unused-here" for m in secret["keyToEnv"]}}, client=client)
        sc = {k: (int(v) if k in ("runAsUser", "runAsGroup") else v) for k, v in k8s["securityContext"].items()}
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "build-task", "namespace": ns},
               "spec": {"restartPolicy": "Never", "containers": [{
                   "name": "main", "image": node_image, "imagePullPolicy": k8s["imagePullPolicy"], "command": command,
                   "resources": {"requests": {"cpu": res["resourceCpuRequest"], "memory": res["resourceMemoryRequest"]},
                                 "limits": {"cpu": res["resourceCpuLimit"], "memory": res["resourceMemoryLimit"]}},
                   # Kubeflow adds these to every task container (kfp-kubernetes 2.17 "platform security defaults")
                   "securityContext": {**sc, "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                       "seccompProfile": {"type": "RuntimeDefault"}},
                   "env": [{"name": m["envVar"], "valueFrom": {"secretKeyRef": {"name": secret["secretName"],
                                                                                "key": m["secretKey"]}}}
                           for m in secret["keyToEnv"]],
                   "volumeMounts": [{"name": m["volumeName"], "mountPath": m["mountPath"]} for m in k8s["emptyDirMounts"]]
                   + [{"name": "inputs", "mountPath": "/inputs", "readOnly": True},
                      {"name": "outputs", "mountPath": "/outputs"}]}],
                   "volumes": [{"name": m["volumeName"], "emptyDir": {}} for m in k8s["emptyDirMounts"]]
                   + [{"name": "inputs", "hostPath": {"path": str(root / "inputs")}},
                      {"name": "outputs", "hostPath": {"path": str(root / "outputs")}}]}}
        kube.apply(pod, client=client)
        done = wait_phase(client, "build-task", ns, ("Succeeded", "Failed"), timeout_s=180)
        assert done["status"]["phase"] == "Succeeded", why(client, "build-task", ns, done)
        manifest = json.loads((root / "outputs" / "build" / "dataset" / "manifest.json").read_text())
        docs = manifest["counts"]["documents"]
        assert manifest["stage"] == "build" and (docs["read"], docs["kept"]) == (40, 30), docs
        assert (root / "outputs" / "build" / "executor_output.json").is_file()  # kfp's executor finished
    finally:
        kube.delete("v1", "Pod", "build-task", ns, client=client)
        shutil.rmtree(root, ignore_errors=True)
