"""The restricted-profile checker itself: a pod lmops' hardening produces passes, and each rule of the Pod
Security Standards "restricted" profile (and the read-only root lmops adds) fails when broken."""

from __future__ import annotations

import copy

import pytest

from lmops.security.context import RAY_DIRS, harden
from lmops.security.restricted import pod_specs, violations


def good_pod() -> dict:
    return harden({"containers": [{"name": "main", "image": "localhost/lmops:0.1.0-cpu"}],
                   "initContainers": [{"name": "init", "image": "localhost/lmops:0.1.0-cpu"}]}, RAY_DIRS)


def test_hardened_pod_passes():
    assert violations(good_pod()) == []


def _set(path: str, value):
    def change(pod):
        node = pod
        *parents, last = path.split(".")
        for p in parents:
            node = node[int(p)] if p.isdigit() else node.setdefault(p, {})
        if value is _DELETE:
            node.pop(last, None)
        else:
            node[last] = value
    return change


_DELETE = object()
MAIN = "containers.0.securityContext"
INIT = "initContainers.0.securityContext"


@pytest.mark.parametrize("change, words", [
    (_set("hostNetwork", True), "hostNetwork"),
    (_set("hostPID", True), "hostPID"),
    (_set("hostIPC", True), "hostIPC"),
    (_set(f"{MAIN}.privileged", True), "privileged"),
    (_set(f"{INIT}.allowPrivilegeEscalation", True), "allowPrivilegeEscalation must be false"),
    (_set(f"{MAIN}.allowPrivilegeEscalation", _DELETE), "allowPrivilegeEscalation must be false"),
    (_set(f"{MAIN}.capabilities", {"drop": ["NET_RAW"]}), "drop must contain ALL"),
    (_set(f"{MAIN}.capabilities", {"drop": ["ALL"], "add": ["SYS_ADMIN"]}), "only NET_BIND_SERVICE"),
    (_set("securityContext.runAsNonRoot", False), "runAsNonRoot: must not be false"),
    (_set(f"{MAIN}.runAsUser", 0), "runAsUser 0"),
    (_set(f"{MAIN}.seccompProfile", {"type": "Unconfined"}), "seccompProfile.type Unconfined"),
    (_set("securityContext.seccompProfile", {"type": "Unconfined"}), "seccompProfile.type: Unconfined"),
    (_set(f"{MAIN}.readOnlyRootFilesystem", False), "readOnlyRootFilesystem must be true"),
    (_set(f"{MAIN}.procMount", "Unmasked"), "procMount"),
    (_set(f"{MAIN}.seLinuxOptions", {"type": "spc_t"}), "seLinuxOptions.type"),
    (_set(f"{MAIN}.windowsOptions", {"hostProcess": True}), "hostProcess"),
    (_set("securityContext.sysctls", [{"name": "kernel.msgmax", "value": "1"}]), "not a safe sysctl"),
    (lambda pod: pod["volumes"].append({"name": "host", "hostPath": {"path": "/"}}), "hostPath"),
    (lambda pod: pod["containers"][0].setdefault("ports", []).append({"containerPort": 80, "hostPort": 80}),
     "hostPort"),
])
def test_each_broken_rule_is_named(change, words):
    pod = copy.deepcopy(good_pod())
    change(pod)
    found = violations(pod)
    assert any(words in v for v in found), found


def test_non_root_and_seccomp_may_come_from_the_pod_or_every_container():
    pod = good_pod()
    for c in pod["containers"] + pod["initContainers"]:
        for key in ("runAsNonRoot", "seccompProfile"):
            del c["securityContext"][key]
    assert violations(pod) == []  # the pod level covers them
    del pod["securityContext"]["runAsNonRoot"]
    assert sum("runAsNonRoot must be true" in v for v in violations(pod)) == 2


def test_pod_specs_of_each_kind():
    pod = good_pod()
    deployment = {"kind": "Deployment", "metadata": {"name": "d"}, "spec": {"template": {"spec": pod}}}
    assert [w for w, _ in pod_specs(deployment)] == ["Deployment/d"]
    isvc = {"kind": "InferenceService", "metadata": {"name": "i"},
            "spec": {"predictor": {"minReplicas": 1, "model": {"modelFormat": {"name": "huggingface"},
                                                                "storageUri": "s3://b/m", "args": []}}}}
    ((where, spec),) = pod_specs(isvc)
    assert spec == {"containers": [{"name": "kserve-container", "args": []}]}
    assert any("runAsNonRoot must be true" in v for v in violations(spec))
    with pytest.raises(ValueError, match="no pods known"):
        list(pod_specs({"kind": "ConfigMap"}))
