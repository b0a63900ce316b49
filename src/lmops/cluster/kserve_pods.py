"""The objects of one InferenceService revision as KServe and Knative make them, and what its pods say.

- ``revision_objects``: the Deployment (the predictor's PodSpec as rendered, plus KServe's storage
  initializer; kserve/kserve pkg/webhook/admission/pod/storage_initializer_injector.go) and the Service.
- ``pod_ready`` / ``pod_failure`` / ``pod_waiting``: a revision's state, read from its pods' status as the
  kubelet writes it (a failure is told by the pod's reason, never by a timeout).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

ISVC_LABEL = "serving.kserve.io/inferenceservice"
REVISION_LABEL = "serving.knative.dev/revision"
# KServe's injector: the init container's name, the shared emptyDir and where both mount it
STORAGE_INITIALIZER = "storage-initializer"
PROVISION_VOLUME = "kserve-provision-location"
MODEL_MOUNT = "/mnt/models"
S3_ANNOTATION = "serving.kserve.io/s3-"
LOCAL_MODEL_VOLUME = "kserve-local-model"  # a model folder on this machine (the node), read-only
# KServe's default ClusterStorageContainer resources
INITIALIZER_RESOURCES = {"requests": {"cpu": "100m", "memory": "100Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}
# PodSpec fields a predictor may carry (the rest of it is KServe's component extension: replicas, scaling,
# canaryTrafficPercent, logger, batcher, ...)
POD_FIELDS = ("containers", "initContainers", "volumes", "serviceAccountName", "securityContext", "nodeSelector",
              "tolerations", "affinity", "imagePullSecrets", "priorityClassName", "schedulerName", "runtimeClassName",
              "terminationGracePeriodSeconds", "dnsPolicy", "dnsConfig", "enableServiceLinks", "hostAliases",
              "automountServiceAccountToken", "topologySpreadConstraints")
# container states that will not get better by waiting
STUCK = ("ErrImageNeverPull", "ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
         "CreateContainerError", "RunContainerError")


class Unservable(ValueError):
    """A predictor the stand-in cannot make pods for (the reason becomes RevisionFailed)."""


def storage_uri(predictor: dict[str, Any], container: dict[str, Any]) -> str | None:
    """What KServe's storage initializer downloads: ``storageUri``, else the container's STORAGE_URI (custom
    containers); ``models:/`` URIs are not KServe's to fetch (the lmops server resolves them itself)."""
    env = {e["name"]: e.get("value") for e in container.get("env") or [] if "name" in e}
    uri = (predictor.get("model") or {}).get("storageUri") or predictor.get("storageUri") or env.get("STORAGE_URI")
    return uri if uri and not uri.startswith("models:/") else None


def s3_credential_env(secret: dict[str, Any]) -> list[dict[str, Any]]:
    """The env KServe's S3 credential builder gives the storage initializer for a Secret attached to the
    predictor's ServiceAccount and annotated ``serving.kserve.io/s3-*`` (kserve/kserve pkg/credentials/s3):
    the keys by reference, the endpoint and region from the annotations."""
    ann = secret["metadata"].get("annotations") or {}
    name = secret["metadata"]["name"]
    env: list[dict[str, Any]] = [{"name": key, "valueFrom": {"secretKeyRef": {"name": name, "key": key}}}
                                 for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")]
    endpoint = ann.get(S3_ANNOTATION + "endpoint")
    if endpoint:
        https = ann.get(S3_ANNOTATION + "usehttps", "1") != "0"
        env += [{"name": "S3_ENDPOINT", "value": endpoint}, {"name": "S3_USE_HTTPS", "value": "1" if https else "0"},
                {"name": "AWS_ENDPOINT_URL", "value": f"{'https' if https else 'http'}://{endpoint}"}]
    if ann.get(S3_ANNOTATION + "region"):
        env.append({"name": "AWS_DEFAULT_REGION", "value": ann[S3_ANNOTATION + "region"]})
    return env


def revision_objects(isvc: dict[str, Any], revision: str, digest: str,
                     storage_env: list[dict[str, Any]] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(Deployment, Service) of one revision, owned by the InferenceService. ``storage_env``: the storage
    initializer's credentials (``s3_credential_env`` of the ServiceAccount's annotated Secret)."""
    meta = isvc["metadata"]
    ns, name = meta["namespace"], meta["name"]
    predictor = isvc["spec"].get("predictor") or {}
    if not predictor.get("containers"):
        kind = ((predictor.get("model") or {}).get("modelFormat") or {}).get("name", "a model format")
        raise Unservable(f"no ServingRuntime for {kind} on this cluster: the KServe stand-in serves custom"
                         " containers (spec.predictor.containers) only")
    pod = {k: predictor[k] for k in POD_FIELDS if k in predictor}
    pod["containers"] = [dict(c) for c in predictor["containers"]]
    main = pod["containers"][0]
    uri = storage_uri(predictor, main)
    if uri:
        _inject_storage_initializer(pod, main, uri, storage_env or [])
    labels = {ISVC_LABEL: name, "component": "predictor", REVISION_LABEL: revision,
              "serving.knative.dev/configuration": f"{name}-predictor", "serving.knative.dev/service": f"{name}-predictor",
              "app": revision}
    owner = [{"apiVersion": isvc["apiVersion"], "kind": isvc["kind"], "name": name, "uid": meta["uid"],
              "controller": True, "blockOwnerDeletion": True}]
    replicas = max(1, int(predictor.get("minReplicas") or 1))
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": f"{revision}-deployment", "namespace": ns, "labels": labels, "ownerReferences": owner,
                     "annotations": {"serving.kserve.io/spec-digest": digest}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {REVISION_LABEL: revision}},
                 "template": {"metadata": {"labels": labels}, "spec": pod}},
    }
    port = next((p["containerPort"] for p in main.get("ports") or [] if "containerPort" in p), 8080)
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": revision, "namespace": ns, "labels": labels, "ownerReferences": owner},
        "spec": {"selector": {REVISION_LABEL: revision},
                 "ports": [{"name": "http", "port": 80, "targetPort": port, "protocol": "TCP"}]},
    }
    return deployment, service


def _inject_storage_initializer(pod: dict[str, Any], main: dict[str, Any], uri: str, env: list[dict[str, Any]]) -> None:
    volumes = list(pod.get("volumes") or [])
    volumes.append({"name": PROVISION_VOLUME, "emptyDir": {}})
    mounts = [{"name": PROVISION_VOLUME, "mountPath": MODEL_MOUNT}]
    if uri.startswith("/") or uri.startswith("file://"):  # on a one-machine cluster the node is this machine
        path = uri.removeprefix("file://")
        volumes.append({"name": LOCAL_MODEL_VOLUME, "hostPath": {"path": path, "type": "Directory"}})
        mounts.append({"name": LOCAL_MODEL_VOLUME, "mountPath": path, "readOnly": True})
    init = {
        "name": STORAGE_INITIALIZER, "image": main["image"], "imagePullPolicy": main.get("imagePullPolicy", "IfNotPresent"),
        "command": ["python", "-m", "lmops.serve.storage_initializer"], "args": [uri, MODEL_MOUNT],
        "resources": INITIALIZER_RESOURCES, "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
    }
    if env:  # the ServiceAccount's credentials only: never the predictor container's env or envFrom
        init["env"] = env
    if main.get("securityContext"):  # the restricted context lmops renders (KServe's is configurable)
        init["securityContext"] = main["securityContext"]
    pod["initContainers"] = [*(pod.get("initContainers") or []), init]
    pod["volumes"] = volumes
    main["volumeMounts"] = [*(main.get("volumeMounts") or []),
                            {"name": PROVISION_VOLUME, "mountPath": MODEL_MOUNT, "readOnly": True}]


def revision_of(pod: dict[str, Any]) -> str | None:
    return (pod["metadata"].get("labels") or {}).get(REVISION_LABEL)


def pod_ready(pod: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def readiness_path(pod: dict[str, Any]) -> str | None:
    """The predictor container's HTTP readiness probe path (None without one)."""
    probe = (pod["spec"]["containers"][0].get("readinessProbe") or {}).get("httpGet") or {}
    return probe.get("path")


def pod_failure(pod: dict[str, Any], log_tail: Callable[[str, bool], str]) -> str | None:
    """Why this pod cannot serve (an init container or container that exited with an error, was OOMKilled,
    has no image or a missing Secret), else None. ``log_tail(container, previous)`` reads the last log
    lines when the kubelet kept no termination message."""
    status = pod.get("status") or {}
    for kind, statuses in (("init container", status.get("initContainerStatuses")),
                           ("container", status.get("containerStatuses"))):
        for cs in statuses or []:
            state, last = cs.get("state") or {}, cs.get("lastState") or {}
            waiting = state.get("waiting") or {}
            if waiting.get("reason") in STUCK:
                return f"{kind} {cs['name']}: {waiting['reason']}: {waiting.get('message', '')}".rstrip(": ")
            for previous, term in ((False, state.get("terminated")), (True, last.get("terminated"))):
                if term and (term.get("exitCode") or term.get("reason") == "OOMKilled"):
                    message = (term.get("message") or "").strip() or log_tail(cs["name"], previous)
                    return (f"{kind} {cs['name']} terminated: {term.get('reason', 'Error')} (exit code "
                            f"{term.get('exitCode')}); last log lines:\n{message}")
    if status.get("phase") == "Failed":
        return f"pod {status.get('reason', 'Failed')}: {status.get('message', '')}"
    return None


def pod_waiting(pod: dict[str, Any]) -> str:
    """Why a pod is not ready yet, in a few words (scheduling, init containers, probes)."""
    status = pod.get("status") or {}
    for c in status.get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False":
            return f"{c.get('reason', 'Unschedulable')}: {c.get('message', '')}"
    for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        waiting = (cs.get("state") or {}).get("waiting")
        if waiting:
            return f"{cs['name']}: {waiting.get('reason', 'waiting')}"
    return status.get("phase", "")
