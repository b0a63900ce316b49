"""`lmops cluster down` leaves nothing of the node behind -- no process, container, mount, network interface,
iptables rule or changed sysctl -- after a clean run, after a crash (every process SIGKILLed) and after
Ctrl-C during `up`.

One node runs per machine, so this stops the session's cluster first: these tests are ordered last
(the `stops_the_node` marker; tests/conftest.py) and the session's fixture tolerates a cluster already down.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from node_pods import BB, busybox_pod, load_busybox, wait_phase
from test_control_plane import ctrl_c_during_up, processes_of

from lmops import kube
from lmops.cluster import control_plane as cp
from lmops.cluster import node, node_network

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.stops_the_node]


def leftovers(folder: Path) -> list[str]:
    """Everything of this cluster's node still on the machine (empty when down left nothing)."""
    shims = [p for p in processes_of(folder) if "containerd-shim" in p]
    found = [f"process {p}" for p in processes_of(folder)] + [f"shim {s}" for s in shims]
    found += [f"mount {m}" for m in node.mounts_under(folder)]
    found += node_network.leftovers()
    saved = folder / "node" / "sysctl-before.json"
    if saved.exists():
        found.append(f"sysctls not restored ({saved})")
    if node.owner() is not None:
        found.append(f"a node still owns the machine ({node.owner()})")
    return found


def a_running_pod(cluster) -> None:
    load_busybox(cluster)
    client = cluster.client()
    pod = busybox_pod("sleeper", f"exec {BB} sleep 600")
    # restarted by the kubelet of the next `up` (with Never, a container that down killed leaves the pod Failed)
    pod["spec"]["restartPolicy"] = "Always"
    kube.apply({**pod, "metadata": {**pod["metadata"], "namespace": "default"}}, client=client)
    wait_phase(client, "sleeper", "default", ("Running",))


@pytest.fixture
def machine_without_a_node():
    """Stop whichever cluster runs the machine's node (the session's), so this test can run its own."""
    owner = node.owner()
    if owner is not None:
        cp.down(owner, echo=lambda line: None)
    yield


def test_down_after_a_clean_run_and_after_a_crash_leaves_nothing(machine_without_a_node, tmp_path):
    before = {k: node_network._sysctl(k) for k in node_network.SYSCTLS}
    folder = tmp_path / "c"
    cluster = cp.up(folder, standins=False, echo=lambda line: None)
    a_running_pod(cluster)
    assert cp.down(folder, echo=lambda line: None)
    assert leftovers(folder) == []
    assert {k: node_network._sysctl(k) for k in node_network.SYSCTLS} == before

    # a crash: every process of the cluster killed at once (the pod's too, by its shim's death or not)
    cluster = cp.up(folder, standins=False, echo=lambda line: None)  # same etcd: the pod comes back
    wait_phase(cluster.client(), "sleeper", "default", ("Running",))
    for rec in cp.status(folder)["processes"].values():
        os.killpg(rec["pgid"], signal.SIGKILL)
    # SIGKILL is delivered asynchronously: containerd, with its many threads, can take a few seconds to be gone
    deadline = time.monotonic() + 30
    while not (state := cp.status(folder)["state"]).startswith("stale") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert state.startswith("stale"), state
    cp.down(folder, echo=lambda line: None)
    assert leftovers(folder) == []
    assert {k: node_network._sysctl(k) for k in node_network.SYSCTLS} == before


def test_ctrl_c_while_the_node_starts_leaves_nothing(machine_without_a_node, tmp_path):
    folder = tmp_path / "c"
    ctrl_c_during_up(folder, node.KUBELET, "--no-standins")
    assert leftovers(folder) == [] and cp.status(folder)["state"] == "stopped"
