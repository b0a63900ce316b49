"""The node of `lmops cluster` (kubelet + containerd + kube-proxy + cluster DNS on this machine): pods run for
real -- restricted security context, limits in their cgroup, Services by name, the API server through
`kubernetes.default`, `kubectl logs` and `exec`. Traffic goes only to the pods' bridge and 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from node_pods import BB, busybox_pod, load_busybox, logs, wait_phase, why

from lmops import kube
from lmops.cluster import control_plane as cp
from lmops.cluster import node

pytestmark = pytest.mark.cluster
KUBECTL = str(Path(sys.executable).with_name("kubectl"))


def kubectl(cluster, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([KUBECTL, "--kubeconfig", cluster.kubeconfig, *args], capture_output=True, text=True,
                          timeout=60)


@pytest.fixture(scope="module")
def busybox(kube_cluster) -> str:
    return load_busybox(kube_cluster)


def run_to_end(cluster, namespace: str, pod: dict) -> str:
    """Create the pod, wait for it to finish; its log when it succeeded, else fail saying why."""
    client = cluster.client()
    kube.apply(pod, client=client) if "namespace" in pod["metadata"] else kube.apply(
        {**pod, "metadata": {**pod["metadata"], "namespace": namespace}}, client=client)
    name = pod["metadata"]["name"]
    done = wait_phase(client, name, namespace, ("Succeeded", "Failed"), timeout_s=90)
    assert done["status"]["phase"] == "Succeeded", why(client, name, namespace, done)
    return logs(client, name, namespace)


def test_one_ready_schedulable_node(kube_cluster):
    nodes = json.loads(kubectl(kube_cluster, "get", "nodes", "-o", "json").stdout)["items"]
    assert [n["metadata"]["name"] for n in nodes] == [node.NODE_NAME]
    ready = {c["type"]: c["status"] for c in nodes[0]["status"]["conditions"]}["Ready"]
    assert ready == "True" and not nodes[0]["spec"].get("taints")
    st = cp.status(Path(kube_cluster.folder))
    assert st["state"] == "running" and st["node"]["ready"] and st["node"]["schedulable"]
    assert st["node"]["heartbeat_age_s"] < node.HEARTBEAT_STALE_S and any("GPU" in x for x in st["node"]["limits"])
    out = subprocess.run([sys.executable, "-m", "lmops.cli", "cluster", "status", "--folder", kube_cluster.folder],
                         capture_output=True, text=True, timeout=60).stdout
    assert f"node {node.NODE_NAME}: Ready, schedulable" in out and "unlike a real node: no GPU" in out


def test_a_restricted_pod_runs_with_its_limits_read_only_root_and_logs(kube_cluster, kube_namespace, busybox):
    script = (f"{BB} id -u; {BB} cat /sys/fs/cgroup/memory/memory.limit_in_bytes; "
              f"{BB} touch /root-is-writable 2>/dev/null && echo root-writable || echo root-read-only; "
              f"echo ok > /scratch/f && {BB} cat /scratch/f")
    pod = busybox_pod("restricted", script, volumes=[{"name": "scratch", "emptyDir": {}}])
    pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "scratch", "mountPath": "/scratch"}]
    out = run_to_end(kube_cluster, kube_namespace, pod).split()
    assert out == ["1000", str(32 * 2**20), "root-read-only", "ok"]


def test_services_resolve_by_name_and_route_to_pods_and_the_api_server(kube_cluster, kube_namespace, busybox):
    client = kube_cluster.client()
    web = busybox_pod("web", f"echo hello-from-web > /www/index.html && exec {BB} httpd -f -p 8080 -h /www",
                      volumes=[{"name": "www", "emptyDir": {}}])
    web["spec"]["containers"][0]["volumeMounts"] = [{"name": "www", "mountPath": "/www"}]
    web["spec"]["containers"][0]["readinessProbe"] = {"tcpSocket": {"port": 8080}, "periodSeconds": 1}
    kube.apply({**web, "metadata": {**web["metadata"], "namespace": kube_namespace}}, client=client)
    kube.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": kube_namespace},
                "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}}, client=client)
    kube.wait_for("v1", "Endpoints", "web", kube_namespace,
                  lambda e: e and any(s.get("addresses") for s in e.get("subsets") or []), timeout_s=60, client=client)
    # (HTTP by hand: the static busybox's wget crashes resolving names, its nc does not)
    get = f"printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | {BB} nc -w 5"
    script = (f"{get} web 80 | {BB} tail -n1; "  # the short name, through the search path
              f"{get} web.{kube_namespace}.svc.cluster.local 80 | {BB} tail -n1; "
              f"{BB} nslookup kubernetes.default.svc.cluster.local | {BB} grep -A1 'Name:' | {BB} tail -n1; "
              # the API server through its Service (kube-proxy -> the node's relay -> 127.0.0.1)
              f"echo | {BB} nc -w 5 kubernetes.default 443 && echo api-reachable; "
              # nothing outside the cluster domain resolves (no upstream DNS: pods stay on this machine)
              f"{BB} nslookup example.com >/dev/null 2>&1 && echo resolved-outside || echo no-outside-names")
    # the client may start before the DNS stand-in's next poll has the Service: retry a few times
    pod = busybox_pod("client", f"for i in 1 2 3 4 5; do {BB} nslookup web >/dev/null 2>&1 && break; {BB} sleep 1; done; "
                      + script)
    out = run_to_end(kube_cluster, kube_namespace, pod).splitlines()
    assert out[:2] == ["hello-from-web", "hello-from-web"], out
    assert out[2].endswith("10.96.0.1") and out[3:] == ["api-reachable", "no-outside-names"], out


def test_kubectl_logs_and_exec_reach_the_kubelet(kube_cluster, kube_namespace, busybox):
    client = kube_cluster.client()
    pod = busybox_pod("sleeper", f"echo started; exec {BB} sleep 600")
    kube.apply({**pod, "metadata": {**pod["metadata"], "namespace": kube_namespace}}, client=client)
    wait_phase(client, "sleeper", kube_namespace, ("Running",))
    ns = ["-n", kube_namespace]
    out = kubectl(kube_cluster, "exec", *ns, "sleeper", "--", BB, "cat", "/etc/hostname")
    assert out.returncode == 0 and out.stdout.strip() == "sleeper", out.stderr
    for _ in range(20):  # the log line may trail the Running phase by a moment
        out = kubectl(kube_cluster, "logs", *ns, "sleeper")
        if out.stdout.strip():
            break
    assert out.returncode == 0 and out.stdout.strip() == "started", out.stderr


def test_a_second_node_on_this_machine_is_refused_naming_the_first(kube_cluster, tmp_path):
    with pytest.raises(cp.ClusterError, match=f"a node of another `lmops cluster` already runs on this machine "
                                              f"\\({kube_cluster.folder}\\)"):
        cp.up(tmp_path / "second", echo=lambda line: None)
    assert not (tmp_path / "second" / "processes").exists() or not any((tmp_path / "second" / "processes").iterdir())
