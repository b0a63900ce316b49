"""`lmops cluster`: the real control plane -- the session's one (idempotent up, CRDs, kubectl, RBAC, the
controller-manager at work) and a second one in its own folder for what stops it (down, a stale folder,
Ctrl-C during start-up, a port in use)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from child_exec import as_in_a_terminal

from lmops import kube
from lmops.cluster import control_plane as cp
from lmops.cluster import node_network

pytestmark = pytest.mark.cluster
KUBECTL = str(Path(sys.executable).with_name("kubectl"))


def processes_of(folder: Path) -> list[str]:
    """Every live process whose command line names ``folder`` (all the control plane's do)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (cmdline.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(folder) in text and state != "Z":
            found.append(f"{cmdline.parent.name}: {text[:120]}")
    return found


def kubectl(cluster, *args: str) -> str:
    out = subprocess.run([KUBECTL, "--kubeconfig", cluster.kubeconfig, *args], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_up_again_reuses_the_running_control_plane(kube_cluster):
    lines: list[str] = []
    again = cp.up(Path(kube_cluster.folder), echo=lines.append)
    assert again == kube_cluster
    assert "already running at " + kube_cluster.server in lines[0] and "kube-apiserver" in lines[0]
    assert cp.status(Path(kube_cluster.folder))["state"] == "running"


def test_kubectl_sees_the_crds_and_the_served_version(kube_cluster, kube_namespace):
    crds = kubectl(kube_cluster, "get", "crds", "-o", "name")
    for name in ("inferenceservices.serving.kserve.io", "servingruntimes.serving.kserve.io",
                 "clusterservingruntimes.serving.kserve.io", "rayjobs.ray.io", "rayclusters.ray.io"):
        assert f"customresourcedefinition.apiextensions.k8s.io/{name}" in crds
    version = json.loads(kubectl(kube_cluster, "version", "-o", "json"))["serverVersion"]
    assert version["gitVersion"] == "v1.20.2"
    assert kubectl(kube_cluster, "get", "inferenceservices,rayjobs", "-n", kube_namespace).strip() == ""


def test_controller_manager_gives_namespaces_their_service_account_and_token(kube_namespace, kube_cluster):
    client = kube_cluster.client()
    sa = kube.wait_for("v1", "ServiceAccount", "default", kube_namespace, lambda o: o and o.get("secrets"),
                       timeout_s=60, client=client)
    secret = kube.get("v1", "Secret", sa["secrets"][0]["name"], kube_namespace, client=client)
    assert secret["type"] == "kubernetes.io/service-account-token" and secret["data"]["token"]


def test_a_port_in_use_is_named(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(cp.ClusterError, match=f"port {port} on 127.0.0.1 is in use"):
            cp.up(tmp_path / "c", port=port, with_node=False, echo=lambda line: None)
    assert processes_of(tmp_path) == []


@pytest.mark.slow
def test_down_stale_restart_and_ctrl_c_leave_no_process(kube_cluster, tmp_path):
    """One more control plane (no node: one node per machine, the session's), in its own folder: killed
    under it (stale), restarted, stopped; then an `lmops cluster up` interrupted during start-up."""
    folder = tmp_path / "c"
    first = cp.up(folder, standins=False, with_node=False, echo=lambda line: None)
    assert processes_of(folder)
    # a stale folder: its processes die behind its back
    for rec in cp.status(folder)["processes"].values():
        os.killpg(rec["pgid"], signal.SIGKILL)
    time.sleep(0.5)
    assert cp.status(folder)["state"].startswith("stale")
    lines: list[str] = []
    second = cp.up(folder, standins=False, with_node=False, echo=lines.append)
    assert any("cleaning up a stale control plane" in line for line in lines)
    assert second.token == first.token  # same credentials, same etcd data
    assert kube.get("v1", "Namespace", "default", None, client=second.client()) is not None
    assert sorted(cp.down(folder, echo=lambda line: None)) == sorted(
        [cp.ETCD, cp.APISERVER, cp.CONTROLLER_MANAGER, cp.SCHEDULER])
    assert processes_of(folder) == [] and cp.status(folder)["state"] == "stopped"
    # its down left the session's node alone: the machine's bridge and rules are that node's
    assert {f"network interface {node_network.BRIDGE}", "iptables egress rule"} <= set(node_network.leftovers())
    assert cp.status(Path(kube_cluster.folder))["state"] == "running"

    # Ctrl-C while the API server starts: nothing stays behind
    ctrl_c_during_up(folder, cp.APISERVER, "--no-node")
    assert processes_of(folder) == [] and cp.status(folder)["state"] == "stopped"


def ctrl_c_during_up(folder: Path, once_started: str, *args: str, timeout_s: float = 120) -> None:
    """`lmops cluster up` in a child, interrupted (SIGINT, as Ctrl-C) once ``once_started`` was spawned;
    asserts it exited as interrupted (130)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(as_in_a_terminal([sys.executable, "-m", "lmops.cli", "cluster", "up", "--folder", str(folder),
                                              *args]),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.monotonic() + timeout_s
    while not (folder / "processes" / f"{once_started}.json").exists():
        assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 130, out


def test_refusals_name_their_real_cause(kube_cluster, kube_namespace):
    """A missing namespace and a namespace being deleted are said as such, not as an RBAC denial."""
    from lmops import kube

    admin = kube_cluster.client()
    cm = lambda ns, name: {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns}}  # noqa: E731
    with pytest.raises(kube.KubeError) as e:
        kube.apply(cm("no-such-namespace", "x"), client=admin)
    assert e.value.status == 404 and "namespace no-such-namespace does not exist" in str(e.value)
    held = cm(kube_namespace, "held")
    held["metadata"]["finalizers"] = ["lmops.dev/test"]  # keeps the namespace Terminating, as a stopped operator's would
    kube.apply(held, client=admin)
    kube.delete("v1", "Namespace", kube_namespace, None, client=admin)
    try:
        with pytest.raises(kube.KubeError) as e:
            kube.apply(cm(kube_namespace, "late"), client=admin)
        message = str(e.value)
        assert e.value.status == 403 and "is being deleted (Terminating)" in message, message
        assert "Role" not in message and "finalizer" in message
    finally:
        kube.apply({**held, "metadata": {**held["metadata"], "finalizers": []}}, client=admin)
