"""A checker of the Pod Security Standards "restricted" profile (which includes "baseline"), plus the
read-only root filesystem lmops asks of its own pods.

The rules are the ones at kubernetes.io/docs/concepts/security/pod-security-standards (policy version
v1.30 and later), applied to a PodSpec given as a dict, so that every rendered workload (InferenceService
predictor, RayJob head, workers and submitter, the operator's Deployment) is checked by the same code:
``violations(pod_spec)`` returns one line per broken rule, naming the field; empty means compliant.
``pod_specs(manifest)`` finds the PodSpecs inside the kinds lmops renders.
"""

from __future__ import annotations

from typing import Any, Iterator

# restricted: the only volume types allowed
ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected",
                   "secret"}
ADDABLE_CAPABILITIES = {"NET_BIND_SERVICE"}  # restricted: nothing else may be added
SECCOMP_TYPES = {"RuntimeDefault", "Localhost"}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
APPARMOR_TYPES = {"RuntimeDefault", "Localhost"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}
CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")


def violations(pod: dict[str, Any], *, read_only_root: bool = True) -> list[str]:
    """Every rule of the restricted profile ``pod`` (a PodSpec) breaks; with ``read_only_root`` also every
    container whose root filesystem is writable."""
    out: list[str] = []
    psc = pod.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            out.append(f"spec.{field}: host namespaces are forbidden")
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        out.append("spec.securityContext.windowsOptions.hostProcess: forbidden")
    for i, vol in enumerate(pod.get("volumes") or []):
        kinds = set(vol) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            out.append(f"spec.volumes[{i}] ({vol.get('name')}): volume type {sorted(kinds - ALLOWED_VOLUMES)} is not"
                       f" allowed (allowed: {sorted(ALLOWED_VOLUMES)})")
    for s in psc.get("sysctls") or []:
        if s.get("name") not in SAFE_SYSCTLS:
            out.append(f"spec.securityContext.sysctls: {s.get('name')} is not a safe sysctl")
    out += _selinux_apparmor("spec.securityContext", psc)
    if psc.get("runAsUser") == 0:
        out.append("spec.securityContext.runAsUser: 0 (root) is forbidden")
    if psc.get("runAsNonRoot") is False:
        out.append("spec.securityContext.runAsNonRoot: must not be false")
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if pod_seccomp is not None and pod_seccomp not in SECCOMP_TYPES:
        out.append(f"spec.securityContext.seccompProfile.type: {pod_seccomp} (must be RuntimeDefault or Localhost)")
    containers = [(f"spec.{key}[{i}]", c) for key in CONTAINER_LISTS for i, c in enumerate(pod.get(key) or [])]
    if not containers:
        out.append("spec.containers: none")
    for where, c in containers:
        out += _container(where, c, psc, read_only_root)
    return out


def _container(where: str, c: dict[str, Any], psc: dict[str, Any], read_only_root: bool) -> list[str]:
    out: list[str] = []
    where = f"{where} ({c.get('name')})"
    sc = c.get("securityContext") or {}
    if sc.get("privileged"):
        out.append(f"{where}: privileged is forbidden")
    if (sc.get("windowsOptions") or {}).get("hostProcess"):
        out.append(f"{where}: windowsOptions.hostProcess is forbidden")
    if sc.get("procMount", "Default") != "Default":
        out.append(f"{where}: procMount {sc['procMount']} (must be Default)")
    for p in c.get("ports") or []:
        if p.get("hostPort"):
            out.append(f"{where}: hostPort {p['hostPort']} is forbidden")
    out += _selinux_apparmor(f"{where}.securityContext", sc)
    if sc.get("allowPrivilegeEscalation") is not False:
        out.append(f"{where}: securityContext.allowPrivilegeEscalation must be false")
    caps = sc.get("capabilities") or {}
    if "ALL" not in (caps.get("drop") or []):
        out.append(f"{where}: securityContext.capabilities.drop must contain ALL")
    added = set(caps.get("add") or []) - ADDABLE_CAPABILITIES
    if added:
        out.append(f"{where}: securityContext.capabilities.add {sorted(added)} (only NET_BIND_SERVICE may be added)")
    non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
    if non_root is not True:
        out.append(f"{where}: runAsNonRoot must be true (in the container's or the pod's securityContext)")
    if sc.get("runAsUser") == 0:
        out.append(f"{where}: securityContext.runAsUser 0 (root) is forbidden")
    seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
    if seccomp not in SECCOMP_TYPES:
        out.append(f"{where}: seccompProfile.type {seccomp} (must be RuntimeDefault or Localhost, in the container's"
                   " or the pod's securityContext)")
    if read_only_root and sc.get("readOnlyRootFilesystem") is not True:
        out.append(f"{where}: securityContext.readOnlyRootFilesystem must be true")
    return out


def _selinux_apparmor(where: str, sc: dict[str, Any]) -> list[str]:
    out = []
    se = sc.get("seLinuxOptions") or {}
    if se.get("type", "") not in SELINUX_TYPES:
        out.append(f"{where}.seLinuxOptions.type: {se['type']} is not allowed")
    if se.get("user") or se.get("role"):
        out.append(f"{where}.seLinuxOptions: user and role must not be set")
    apparmor = (sc.get("appArmorProfile") or {}).get("type")
    if apparmor is not None and apparmor not in APPARMOR_TYPES:
        out.append(f"{where}.appArmorProfile.type: {apparmor} (must be RuntimeDefault or Localhost)")
    return out


def pod_specs(manifest: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, PodSpec) for each pod a manifest of a kind lmops renders describes."""
    kind = manifest.get("kind")
    spec = manifest.get("spec") or {}
    name = f"{kind}/{(manifest.get('metadata') or {}).get('name')}"
    if kind == "Pod":
        yield name, spec
    elif kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        yield name, spec["template"]["spec"]
    elif kind == "InferenceService":
        for component in ("predictor", "transformer", "explainer"):
            if component in spec:
                yield f"{name} {component}", _isvc_pod(spec[component])
    elif kind == "RayJob":
        cluster = spec["rayClusterSpec"]
        yield f"{name} head", cluster["headGroupSpec"]["template"]["spec"]
        for group in cluster.get("workerGroupSpecs") or []:
            yield f"{name} worker group {group['groupName']}", group["template"]["spec"]
        if "submitterPodTemplate" in spec:
            yield f"{name} submitter", spec["submitterPodTemplate"]["spec"]
    else:
        raise ValueError(f"pod_specs: no pods known in a {kind}")


# KServe's own fields beside the inline PodSpec of a component (ComponentExtensionSpec, PredictorSpec's
# framework shorthands), and beside the core Container of a ``model`` (ModelSpec)
KSERVE_COMPONENT_FIELDS = {"minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "scaleMetricType",
                           "containerConcurrency", "timeout", "canaryTrafficPercent", "logger", "batcher", "labels",
                           "annotations", "deploymentStrategy", "autoScaling", "workerSpec", "storageUris", "model",
                           "sklearn", "xgboost", "tensorflow", "pytorch", "triton", "onnx", "huggingface", "pmml",
                           "lightgbm", "paddle"}
KSERVE_MODEL_FIELDS = {"modelFormat", "runtime", "protocolVersion", "storageUri", "storage"}


def _isvc_pod(component: dict[str, Any]) -> dict[str, Any]:
    """KServe's component spec as the core PodSpec it describes: its own fields dropped, and a ``model``
    (served by a runtime) as the main container, named as KServe names it."""
    pod = {k: v for k, v in component.items() if k not in KSERVE_COMPONENT_FIELDS}
    if "model" in component:
        model = {k: v for k, v in component["model"].items() if k not in KSERVE_MODEL_FIELDS}
        pod["containers"] = [{"name": "kserve-container", **model}] + list(pod.get("containers") or [])
    return pod
