"""Pods on the test session's node: a tiny image (Debian's static busybox, no registry needed) and a way to
run a pod to its end and see why it failed.

The busybox image is one file in a one-layer OCI archive (lmops.cluster.oci_archive, as the node's pause
image): `/bin/busybox` with its applets called as ``/bin/busybox <applet>``. The .deb comes from the Debian
archive once and is cached beside the Kubernetes binaries.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

from lmops import kube
from lmops.cluster import binaries, node, oci_archive

BUSYBOX_IMAGE = "localhost/lmops-test/busybox:1.35"
BB = "/bin/busybox"
# The restricted pod security standard, as lmops renders it for its own pods.
RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True, "runAsUser": 1000}
RESTRICTED_POD = {"seccompProfile": {"type": "RuntimeDefault"}, "runAsNonRoot": True, "runAsUser": 1000}


def busybox_binary() -> Path:
    out = binaries.cache_root() / "busybox-static" / "bin" / "busybox"
    if out.is_file():
        return out
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["apt-get", "download", "-q", "busybox-static"], cwd=tmp, check=True, capture_output=True)
        deb = next(Path(tmp).glob("busybox-static_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(Path(tmp) / "x")], check=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        (Path(tmp) / "x" / "bin" / "busybox").replace(out)
    return out


def load_busybox(cluster) -> str:
    """The busybox image in the node's containerd (imported once per node); returns its name."""
    folder = Path(cluster.folder)
    sock = node.socket_path(folder)
    if BUSYBOX_IMAGE not in node.ctr(sock, "images", "ls", "-q").stdout.split():
        archive = oci_archive.write(node.node_dir(folder) / "busybox.oci.tar", BUSYBOX_IMAGE,
                                    {BB: busybox_binary()}, [BB])
        node.ctr(sock, "images", "import", str(archive))
    return BUSYBOX_IMAGE


def busybox_pod(name: str, script: str, **spec) -> dict:
    """A restricted pod running ``script`` with busybox's sh (never restarted)."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"restartPolicy": "Never", "securityContext": RESTRICTED_POD, "enableServiceLinks": False,
                     "containers": [{"name": "main", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
                                     "command": [BB, "sh", "-c", script], "securityContext": RESTRICTED_CONTAINER,
                                     "resources": {"limits": {"cpu": "100m", "memory": "32Mi"}}}],
                     **spec}}


def wait_phase(client, name: str, namespace: str, phases: tuple[str, ...], timeout_s: float = 60) -> dict:
    """Wait until the pod is in one of ``phases``; on timeout, fail saying why (events, state, logs)."""
    deadline = time.monotonic() + timeout_s
    pod = None
    while time.monotonic() < deadline:
        pod = kube.get("v1", "Pod", name, namespace, client=client)
        if pod and pod.get("status", {}).get("phase") in phases:
            return pod
        time.sleep(0.3)
    raise AssertionError(f"pod {namespace}/{name} not {'/'.join(phases)} in {timeout_s:.0f}s:\n{why(client, name, namespace, pod)}")


def why(client, name: str, namespace: str, pod: dict | None) -> str:
    """What a person would look at: the pod's phase and container states, its events, its last log lines."""
    from kubernetes import client as k8s

    lines = [f"phase: {(pod or {}).get('status', {}).get('phase')}"]
    for cs in (pod or {}).get("status", {}).get("containerStatuses", []):
        lines.append(f"container {cs['name']}: {cs.get('state')}")
    events, _ = kube.list_objects("v1", "Event", namespace, client=client)
    lines += [f"event {e.get('reason')}: {e.get('message')}" for e in events
              if e.get("involvedObject", {}).get("name") == name]
    try:
        log = k8s.CoreV1Api(client).read_namespaced_pod_log(name, namespace, tail_lines=20)
        lines.append("last log lines:\n" + log)
    except Exception as e:  # noqa: BLE001 - the log is a hint, its absence is part of the story
        lines.append(f"no log: {e}")
    return "\n".join(lines)


def logs(client, name: str, namespace: str) -> str:
    from kubernetes import client as k8s

    return k8s.CoreV1Api(client).read_namespaced_pod_log(name, namespace)
