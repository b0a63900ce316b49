"""The objects KubeRay's controllers make for a RayJob, as pure functions of the RayJob (no I/O): the RayCluster,
its head and worker pods, the head Services and the submitter Job.

Each builder follows KubeRay's Go code (ray-project/kuberay v1.7, ``ray-operator/controllers/ray``): the
function it plays is named in its docstring. What KubeRay injects is injected the same way -- the ``ray start``
command (``ulimit -n ...; ray start ... --block``) as the Ray container's bash args, the ports, the
``wait-gcs-ready`` init container of workers, the env (RAY_ADDRESS, KUBERAY_GEN_RAY_START_CMD, FQ_RAY_IP ...),
the /dev/shm emptyDir, the HTTP health probes of Ray >= 2.53, the labels -- and everything the rendered
``rayClusterSpec`` says (image, env, envFrom, volumes, resources, security context, tolerations) is kept.
"""

from __future__ import annotations

import copy
import json
import math
import re
from typing import Any

RAY_API = "ray.io/v1"
# utils/constant.go
CLUSTER_LABEL, NODE_TYPE_LABEL, GROUP_LABEL = "ray.io/cluster", "ray.io/node-type", "ray.io/group"
NODE_LABEL, ID_LABEL = "ray.io/is-ray-node", "ray.io/identifier"
ORIGIN_NAME_LABEL, ORIGIN_CRD_LABEL = "ray.io/originated-from-cr-name", "ray.io/originated-from-crd"
SUBMISSION_MODE_LABEL = "ray.io/job-submission-mode"
APP_LABEL, CREATED_BY_LABEL = "app.kubernetes.io/name", "app.kubernetes.io/created-by"
APP, COMPONENT = "kuberay", "kuberay-operator"
HEAD_GROUP = "headgroup"
GCS_PORT, DASHBOARD_PORT, CLIENT_PORT, METRICS_PORT, AGENT_PORT = 6379, 8265, 10001, 8080, 52365
DEFAULT_PORTS = {"gcs-server": GCS_PORT, "dashboard": DASHBOARD_PORT, "client": CLIENT_PORT}
SUBMITTER_CONTAINER = "ray-job-submitter"
SUBMITTER_BACKOFF_LIMIT = 2
CLUSTER_DOMAIN = "cluster.local"
PYTHON_HEALTH = ('python -c "import urllib.request; r=urllib.request.urlopen(\'%s\', timeout=%d);'
                 ' exit(0 if b\'success\' in r.read() else 1)"')


def owner_ref(obj: dict[str, Any]) -> dict[str, Any]:
    """A controller ownerReference to ``obj``: the garbage collector deletes what it owns with it."""
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": obj["metadata"]["name"],
            "uid": obj["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}


def head_service_fqdn(cluster_name: str, namespace: str) -> str:
    """utils.GenerateFQDNServiceName: what workers join and the dashboard URL names."""
    return f"{cluster_name}-head-svc.{namespace}.svc.{CLUSTER_DOMAIN}"


# ---------------------------------------------------------------- RayJob -> RayCluster
def ray_cluster(rayjob: dict[str, Any], name: str) -> dict[str, Any]:
    """rayjob_controller.constructRayClusterForRayJob (K8sJobMode)."""
    meta = rayjob["metadata"]
    labels = {**(meta.get("labels") or {}), ORIGIN_NAME_LABEL: meta["name"], ORIGIN_CRD_LABEL: "RayJob",
              SUBMISSION_MODE_LABEL: rayjob["spec"].get("submissionMode") or "K8sJobMode"}
    return {"apiVersion": RAY_API, "kind": "RayCluster",
            "metadata": {"name": name, "namespace": meta["namespace"], "labels": labels,
                         "annotations": dict(meta.get("annotations") or {}), "ownerReferences": [owner_ref(rayjob)]},
            "spec": copy.deepcopy(rayjob["spec"]["rayClusterSpec"])}


# ---------------------------------------------------------------- the head Services
def head_service(cluster: dict[str, Any], *, name: str | None = None, labels: dict[str, str] | None = None,
                 owner: dict[str, Any] | None = None) -> dict[str, Any]:
    """common.BuildServiceForHeadPod (and BuildHeadServiceForRayJob when ``name``/``labels`` name the RayJob's):
    headless (ENABLE_RAY_HEAD_CLUSTER_IP_SERVICE unset), publishing the head before it is ready, one port per
    named container port of the head plus metrics."""
    cname = cluster["metadata"]["name"]
    selector = {CLUSTER_LABEL: cname, NODE_TYPE_LABEL: "head", ID_LABEL: f"{cname}-head"[-63:],
                APP_LABEL: APP, CREATED_BY_LABEL: COMPONENT}
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    ports = {p.get("name") or f"{p['containerPort']}-port": p["containerPort"] for p in head.get("ports") or []}
    ports = ports or dict(DEFAULT_PORTS)
    ports.setdefault("metrics", METRICS_PORT)
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name or f"{cname}-head-svc", "namespace": cluster["metadata"]["namespace"],
                         "labels": labels or dict(selector), "ownerReferences": [owner_ref(owner or cluster)]},
            "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": selector,
                     "ports": [{"name": n, "port": p, "appProtocol": "tcp"} for n, p in sorted(ports.items())]}}


# ---------------------------------------------------------------- the Ray pods
def head_pod(cluster: dict[str, Any]) -> dict[str, Any]:
    """common.DefaultHeadPodTemplate + BuildPod for the head (generateName ``<cluster>-head-``)."""
    spec = cluster["spec"]["headGroupSpec"]
    return _ray_pod(cluster, spec, "head", HEAD_GROUP, f"{_check_name(cluster['metadata']['name'])}-head-")


def worker_pod(cluster: dict[str, Any], group: dict[str, Any]) -> dict[str, Any]:
    """common.DefaultWorkerPodTemplate + BuildPod for one pod of a worker group
    (generateName ``<cluster>-<group>-worker-``), with the ``wait-gcs-ready`` init container."""
    cname = cluster["metadata"]["name"]
    prefix = _check_name(f"{cname}-{group['groupName']}")[:50]
    return _ray_pod(cluster, group, "worker", group["groupName"], f"{prefix}-worker-")


def _ray_pod(cluster: dict[str, Any], group: dict[str, Any], node_type: str, group_name: str,
             generate_name: str) -> dict[str, Any]:
    cname, ns = cluster["metadata"]["name"], cluster["metadata"]["namespace"]
    fqdn = head_service_fqdn(cname, ns)
    template = copy.deepcopy(group["template"])
    meta, spec = template.get("metadata") or {}, template["spec"]
    container = spec["containers"][0]
    labels = {NODE_LABEL: "yes", CLUSTER_LABEL: cname, NODE_TYPE_LABEL: node_type, GROUP_LABEL: group_name,
              ID_LABEL: f"{cname}-{node_type}"[-63:], APP_LABEL: APP, CREATED_BY_LABEL: COMPONENT}
    for k, v in (meta.get("labels") or {}).items():
        if k not in (NODE_TYPE_LABEL, GROUP_LABEL, CLUSTER_LABEL):  # labelPod: these three are not overridable
            labels[k] = v
    params = start_params(group.get("rayStartParams") or {}, node_type, fqdn)
    if node_type == "worker":
        spec["initContainers"] = [*(spec.get("initContainers") or []), _wait_gcs_ready(container, fqdn)]
    container.setdefault("ports", [])
    if not any(p.get("name") == "metrics" for p in container["ports"]):
        container["ports"].append({"name": "metrics", "containerPort": METRICS_PORT})
    if "plasma-directory" not in params:
        _add_empty_dir(spec, container, "shared-mem", "/dev/shm", memory=True)
    start = ray_start_command(node_type, params, container.get("resources") or {})
    cmd = " ".join(container.get("command") or []) + " ".join(container.get("args") or [])
    if "ray start" not in cmd:
        container["command"] = ["/bin/bash", "-c", "--"]
        generated = f"ulimit -n ${{RAY_START_ULIMIT_OPEN_FILES:-65536}}; {start}"
        container["args"] = [f"{cmd} && {generated}" if cmd else generated]
    for init in spec.get("initContainers") or []:
        _env_default(init, "FQ_RAY_IP", fqdn)
        _env_default(init, "RAY_IP", fqdn.split(".")[0])
    _ray_container_env(container, node_type, fqdn, start)
    _probes(container, node_type, params)
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": generate_name, "namespace": ns, "labels": labels,
                         "annotations": dict(meta.get("annotations") or {}), "ownerReferences": [owner_ref(cluster)]},
            "spec": spec}


def start_params(params: dict[str, str], node_type: str, fqdn: str) -> dict[str, str]:
    """common.setMissingRayStartParams."""
    params = dict(params)
    if node_type == "worker":
        params.setdefault("address", f"{fqdn}:{GCS_PORT}")
    else:
        params.setdefault("dashboard-host", "0.0.0.0")
    params.setdefault("metrics-export-port", str(METRICS_PORT))
    params["block"] = "true"
    params.setdefault("dashboard-agent-listen-port", str(AGENT_PORT))
    return params


def ray_start_command(node_type: str, params: dict[str, str], resources: dict[str, Any]) -> str:
    """common.generateRayStartCommand: num-cpus, memory and num-gpus from the container's limits (CPU: the
    request when there is no limit), rounded up as resource.Quantity.Value() does; flags sorted."""
    params = dict(params)
    limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
    cpu = limits.get("cpu") or requests.get("cpu")
    if "num-cpus" not in params and cpu:
        params["num-cpus"] = str(math.ceil(quantity(cpu)))
    if "memory" not in params and limits.get("memory"):
        params["memory"] = str(math.ceil(quantity(limits["memory"])))
    gpus = next((v for k, v in sorted(limits.items()) if k.endswith("/gpu") and quantity(v) > 0), None)
    if "num-gpus" not in params and gpus is not None:
        params["num-gpus"] = str(math.ceil(quantity(gpus)))
    flags = []
    for key in sorted(params):
        value = str(params[key])
        if value.lower() in ("true", "false") and key not in ("log-color", "include-dashboard", "include-log-monitor"):
            if value.lower() == "true":
                flags.append(f" --{key} ")
        else:
            flags.append(f" --{key}={value} ")
    return f"ray start{' --head' if node_type == 'head' else ''} {''.join(flags)}"


def _wait_gcs_ready(container: dict[str, Any], fqdn: str) -> dict[str, Any]:
    """The init container KubeRay gives workers (ENABLE_INIT_CONTAINER_INJECTION, on by default)."""
    address = f"{fqdn}:{GCS_PORT}"
    script = (f"\n\t\t\t\t\tSECONDS=0\n\t\t\t\t\twhile true; do\n"
              f"\t\t\t\t\t\tif ray health-check --address {address} > /dev/null 2>&1; then\n"
              f"\t\t\t\t\t\t\techo \"GCS is ready.\"\n\t\t\t\t\t\t\tbreak\n\t\t\t\t\t\tfi\n"
              f"\t\t\t\t\t\techo \"$SECONDS seconds elapsed: Waiting for GCS to be ready.\"\n"
              f"\t\t\t\t\t\tsleep 5\n\t\t\t\t\tdone\n\t\t\t\t")
    out = {"name": "wait-gcs-ready", "image": container["image"], "command": ["/bin/bash", "-c", "--"],
           "args": [script], "env": copy.deepcopy(container.get("env") or []),
           "volumeMounts": copy.deepcopy(container.get("volumeMounts") or []),
           "resources": {"limits": {"cpu": "200m", "memory": "256Mi"}, "requests": {"cpu": "200m", "memory": "256Mi"}}}
    if container.get("imagePullPolicy"):
        out["imagePullPolicy"] = container["imagePullPolicy"]
    if container.get("securityContext"):
        out["securityContext"] = copy.deepcopy(container["securityContext"])
    return out


def _add_empty_dir(spec: dict[str, Any], container: dict[str, Any], name: str, path: str, *, memory: bool) -> None:
    """common.addEmptyDir: skipped when something is mounted at ``path`` already (lmops mounts its own /dev/shm)."""
    if any(m.get("mountPath") == path for m in container.get("volumeMounts") or []):
        return
    if not any(v["name"] == name for v in spec.get("volumes") or []):
        empty: dict[str, Any] = {"medium": "Memory"} if memory else {}
        res = container.get("resources") or {}
        size = (res.get("requests") or {}).get("memory") or (res.get("limits") or {}).get("memory")
        if memory and size:
            empty["sizeLimit"] = size
        spec.setdefault("volumes", []).append({"name": name, "emptyDir": empty})
    container.setdefault("volumeMounts", []).append({"name": name, "mountPath": path, "readOnly": False})


def _env_default(container: dict[str, Any], name: str, value: str) -> None:
    """utils.EnvVarExists guard: a name the template sets already is left as it is."""
    env = container.setdefault("env", [])
    if not any(e["name"] == name for e in env):
        env.append({"name": name, "value": value})


def _ray_container_env(container: dict[str, Any], node_type: str, fqdn: str, start: str) -> None:
    """common.setContainerEnvVars (RayJob-created cluster)."""
    env = container.setdefault("env", [])
    ip = "127.0.0.1"
    if node_type == "worker":
        ip = fqdn
        env += [{"name": "FQ_RAY_IP", "value": fqdn}, {"name": "RAY_IP", "value": fqdn.split(".")[0]}]
    field = lambda path: {"valueFrom": {"fieldRef": {"fieldPath": path}}}  # noqa: E731
    env += [{"name": "RAY_CLUSTER_NAME", **field(f"metadata.labels['{CLUSTER_LABEL}']")},
            {"name": "RAY_CLUSTER_NAMESPACE", **field("metadata.namespace")},
            {"name": "RAY_CLOUD_INSTANCE_ID", **field("metadata.name")},
            {"name": "RAY_NODE_TYPE_NAME", **field(f"metadata.labels['{GROUP_LABEL}']")},
            {"name": "KUBERAY_GEN_RAY_START_CMD", "value": start}]
    _env_default(container, "RAY_PORT", str(GCS_PORT))
    _env_default(container, "RAY_ADDRESS", f"{ip}:{GCS_PORT}")
    _env_default(container, "RAY_USAGE_STATS_KUBERAY_IN_USE", "1")
    if node_type == "head":
        env.append({"name": "RAY_USAGE_STATS_EXTRA_TAGS", "value": "kuberay_version=v1.7.0;kuberay_crd=RayJob"})
    _env_default(container, "RAY_DASHBOARD_ENABLE_K8S_DISK_USAGE", "1")


def _probes(container: dict[str, Any], node_type: str, params: dict[str, str]) -> None:
    """common.initLivenessAndReadinessProbe for Ray >= 2.53: one HTTP health check on the dashboard agent."""
    port = int(params.get("dashboard-agent-listen-port", AGENT_PORT))
    action = {"httpGet": {"path": "/api/healthz", "port": port}}
    head = node_type == "head"
    container.setdefault("livenessProbe", {**action, "initialDelaySeconds": 30, "timeoutSeconds": 5 if head else 2,
                                           "periodSeconds": 5, "successThreshold": 1, "failureThreshold": 120})
    container.setdefault("readinessProbe", {**action, "initialDelaySeconds": 10, "timeoutSeconds": 5 if head else 2,
                                            "periodSeconds": 5, "successThreshold": 1, "failureThreshold": 10})


def _check_name(name: str) -> str:
    """utils.CheckName: at most 50 characters (the tail kept), not starting with a digit."""
    name = name[-50:] if len(name) > 50 else name
    return ("r" + name[1:]) if name[:1].isdigit() else name


# ---------------------------------------------------------------- the submitter
def submit_command(rayjob: dict[str, Any]) -> str:
    """common.BuildJobSubmitCommand (K8sJobMode): wait for the dashboard, submit unless a job of this id exists
    (a retried submitter pod does not submit twice), then follow its logs."""
    status = rayjob.get("status") or {}
    address = status["dashboardURL"]
    address = address if address.startswith("http://") else f"http://{address}"
    job_id = status["jobId"]
    spec = rayjob["spec"]
    health = PYTHON_HEALTH % (f"{address}/api/gcs_healthz", 10)
    cmd = ["until", health, ">/dev/null", "2>&1", ";", "do", "echo",
           json.dumps(f"Waiting for Ray Dashboard GCS to become healthy at {address} ..."), ";", "sleep", "2", ";",
           "done", ";", "if", "!", "ray", "job", "status", "--address", address, job_id, ">/dev/null", "2>&1", ";",
           "then", "ray", "job", "submit", "--address", address, "--no-wait"]
    if spec.get("runtimeEnvYAML"):
        import yaml

        cmd += ["--runtime-env-json", json.dumps(json.dumps(yaml.safe_load(spec["runtimeEnvYAML"])))]
    if spec.get("metadata"):
        cmd += ["--metadata-json", json.dumps(json.dumps(spec["metadata"]))]
    cmd += ["--submission-id", job_id]
    if spec.get("entrypointNumCpus"):
        cmd += ["--entrypoint-num-cpus", f"{float(spec['entrypointNumCpus']):f}"]
    if spec.get("entrypointNumGpus"):
        cmd += ["--entrypoint-num-gpus", f"{float(spec['entrypointNumGpus']):f}"]
    if spec.get("entrypointResources"):
        cmd += ["--entrypoint-resources", json.dumps(spec["entrypointResources"])]
    cmd += ["--", (spec.get("entrypoint") or "").strip(), ";", "fi", ";",
            "ray", "job", "logs", "--address", address, "--follow", job_id]
    return " ".join(cmd)


def submitter_job(rayjob: dict[str, Any], cluster: dict[str, Any]) -> dict[str, Any]:
    """rayjob_controller.createNewK8sJob with getSubmitterTemplate: the rendered submitterPodTemplate (else
    KubeRay's default container), its first container given the submit command when it has none."""
    meta, spec, status = rayjob["metadata"], rayjob["spec"], rayjob.get("status") or {}
    template = copy.deepcopy(spec.get("submitterPodTemplate") or {
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": SUBMITTER_CONTAINER,
            "image": cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"],
            "resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "500m", "memory": "200Mi"}}}]}})
    container = template["spec"]["containers"][0]
    if not container.get("command"):
        container["command"] = ["/bin/bash", "-ce", "--"]
        container["args"] = [submit_command(rayjob)]
    container.setdefault("env", []).extend([
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "RAY_DASHBOARD_ADDRESS", "value": status["dashboardURL"]},
        {"name": "RAY_JOB_SUBMISSION_ID", "value": status["jobId"]}])
    origin = {ORIGIN_NAME_LABEL: meta["name"], ORIGIN_CRD_LABEL: "RayJob", CREATED_BY_LABEL: COMPONENT}
    template.setdefault("metadata", {}).setdefault("labels", {}).update(origin)
    backoff = (spec.get("submitterConfig") or {}).get("backoffLimit", SUBMITTER_BACKOFF_LIMIT)
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"], "labels": dict(origin),
                         "ownerReferences": [owner_ref(rayjob)]},
            "spec": {"backoffLimit": backoff, "template": template}}


# ---------------------------------------------------------------- quantities
_SUFFIX = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30,
           "Ti": 2**40}


def quantity(value: Any) -> float:
    """A Kubernetes quantity as a number ("500m" -> 0.5, "2Gi" -> 2147483648)."""
    m = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value).strip())
    if not m or m.group(2) not in _SUFFIX:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    return float(m.group(1)) * _SUFFIX[m.group(2)]
