"""The node of `lmops cluster`: containerd, kubelet and kube-proxy on this machine, so that pods run for
real (image, command, resources, security context, probes, volumes, Services, DNS, logs and exec).

- containerd, runc, the CNI plugins and iptables are Debian's packages (installed here when missing);
  kubelet and kube-proxy are built from the same source tree as the API server (lmops.cluster.binaries).
- Everything of the node lives under ``<cluster>/node``: containerd's root, state and socket (never the
  machine's default containerd), the kubelet's root, the CNI configuration and address leases.
- Pods sit on the bridge of lmops.cluster.node_network (10.244.0.0/24); the node's address is the
  bridge's, 10.244.0.1. Pods reach the API server through the ``kubernetes`` Service: its endpoint is a
  relay (socat) from 10.244.0.1 to the API server, which listens on 127.0.0.1 only. Names resolve through
  the cluster DNS stand-in (lmops.cluster.dns_standin: no CoreDNS package exists here).
- What a real node has and this one lacks: GPUs (no device plugin, no GPU here), cloud volumes and a
  LoadBalancer; `lmops cluster status` says so.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from lmops.cluster import binaries, node_network, oci_archive, supervise
from lmops.cluster.supervise import ClusterError
from lmops.processes import alive, descendants, free_port

NODE_NAME = "lmops-node"
CLUSTER_DOMAIN = "cluster.local"
PAUSE_IMAGE = f"localhost/lmops/pause:{binaries.K8S_VERSION}"
CONTAINERD, API_RELAY, CLUSTER_DNS, KUBELET, KUBE_PROXY = (
    "containerd", "apiserver-relay", "cluster-dns", "kubelet", "kube-proxy")
ORDER = (CONTAINERD, API_RELAY, CLUSTER_DNS, KUBELET, KUBE_PROXY)
K8S_NAMESPACE = "k8s.io"  # containerd's namespace for the CRI (kubelet's) images and containers
# A command each package installs -> the package (Debian bookworm)
PACKAGES = {"containerd": "containerd", "runc": "runc", "/usr/lib/cni/bridge": "containernetworking-plugins",
            "iptables": "iptables", "dnsmasq": "dnsmasq-base", "socat": "socat", "conntrack": "conntrack"}
LIMITS = ("no GPU (no device plugin; GPU pods stay Pending)", "volumes: emptyDir, hostPath, configMap, secret, "
          "projected only (no cloud or CSI volumes)", "no LoadBalancer Services")
# Heartbeats older than this mean the kubelet is gone, whatever the Ready condition still says (no
# controller marks a node NotReady quickly once its kubelet stops).
HEARTBEAT_STALE_S = 60


def node_dir(folder: Path) -> Path:
    return folder / "node"


def socket_path(folder: Path) -> Path:
    return node_dir(folder) / "containerd" / "containerd.sock"


def running(folder: Path) -> bool:
    """The node's containerd runs (what image loads need)."""
    from lmops.pipeline import servers

    return servers.read_record(CONTAINERD, supervise.procs(folder)) is not None


# ---------------------------------------------------------------- packages
def ensure_packages(echo: Callable[[str], None]) -> None:
    """containerd, runc, CNI plugins, iptables, dnsmasq, socat, conntrack from Debian, when missing."""
    path = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"  # (a non-root PATH may lack the sbin folders)
    missing = sorted({pkg for cmd, pkg in PACKAGES.items() if not shutil.which(cmd, path=path)})
    if not missing:
        return
    echo(f"lmops cluster: installing the node's packages: {' '.join(missing)}")
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*sudo, "apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    out = subprocess.run(install, capture_output=True, text=True, env=env)
    if out.returncode != 0:  # a machine whose package lists were never fetched: fetch them, try again
        subprocess.run([*sudo, "apt-get", "update", "-q"], capture_output=True, env=env)
        out = subprocess.run(install, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise ClusterError(f"apt-get install {' '.join(missing)} failed (the node needs them): "
                           f"{out.stderr.strip()[-500:]}")


# ---------------------------------------------------------------- one node per machine
# kube-proxy rewrites the machine's KUBE-* iptables chains whole, and the bridge and its address are
# fixed: two nodes on one machine would undo each other. The running node's cluster folder is recorded
# here (/run: gone after a reboot, with everything it described).
OWNER_FILE = Path("/run/lmops/node-owner")


def owner() -> Path | None:
    """The folder of the cluster whose node runs on this machine (None: no node runs)."""
    try:
        folder = Path(OWNER_FILE.read_text().strip())
    except OSError:
        return None
    return folder if running(folder) else None


def _owns_the_machines_node(folder: Path) -> bool:
    """This cluster's node is (or was, before a crash) the machine's node: the owner file names it, or
    names nobody alive while this cluster once started a node."""
    try:
        recorded = Path(OWNER_FILE.read_text().strip())
    except OSError:
        recorded = None
    if recorded is not None and recorded.resolve() == folder.resolve():
        return True
    if recorded is not None and running(recorded):
        return False
    return (node_dir(folder) / "started-at").exists()


def check_machine_free(folder: Path) -> None:
    """Refuse a second node on this machine, naming the cluster that runs one."""
    other = owner()
    if other is not None and other.resolve() != folder.resolve():
        raise ClusterError(f"a node of another `lmops cluster` already runs on this machine ({other}): stop it with "
                           f"`lmops cluster down --folder {other}`, or start this one with --no-node")


# ---------------------------------------------------------------- up
def start(folder: Path, bins: binaries.Binaries, *, apiserver_port: int, admin_kubeconfig: Path,
          node_token: str, client, deadline: float) -> float:
    """Start the node's processes (``wait_schedulable`` waits for the node: the caller does other work
    meanwhile); returns when it started."""
    t0 = time.monotonic()
    nd = node_dir(folder)
    nd.mkdir(parents=True, exist_ok=True)
    check_machine_free(folder)
    OWNER_FILE.parent.mkdir(parents=True, exist_ok=True)
    OWNER_FILE.write_text(f"{folder.resolve()}\n")
    (nd / "started-at").write_text(f"{time.time():.0f}\n")
    # what a crashed node of any cluster left (the bridge, rules) goes first: this node owns them now
    node_network.teardown(nd, bins.kube_proxy)
    node_network.setup(nd)

    sock = socket_path(folder)
    supervise.spawn(folder, CONTAINERD, ["containerd", "--config", str(_containerd_config(folder, sock))])
    supervise.wait(folder, CONTAINERD, lambda: _ctr_ok(sock), deadline)
    _load_pause_image(folder, bins, sock)

    # The API server listens on 127.0.0.1: pods reach it on the node's address, same port.
    supervise.spawn(folder, API_RELAY, ["socat", f"TCP-LISTEN:{apiserver_port},bind={node_network.NODE_IP},fork,reuseaddr",
                                        f"TCP:127.0.0.1:{apiserver_port}"])
    _publish_apiserver_endpoint(client, apiserver_port)

    supervise.spawn(folder, CLUSTER_DNS, [sys.executable, "-m", "lmops.cluster.dns_standin", "--kubeconfig", str(admin_kubeconfig),
                                          "--listen", node_network.NODE_IP, "--domain", CLUSTER_DOMAIN,
                                          "--hosts-file", str(nd / "dns" / "hosts")], env={"PYTHONUNBUFFERED": "1"})

    kubeconfig = _node_kubeconfig(folder, admin_kubeconfig, node_token)
    supervise.spawn(folder, KUBELET, [
        str(bins.kubelet), "--config", str(_kubelet_config(folder)), "--kubeconfig", str(kubeconfig),
        "--container-runtime=remote", f"--container-runtime-endpoint=unix://{sock}",
        "--root-dir", str(nd / "kubelet"), "--cert-dir", str(nd / "kubelet" / "pki"),
        "--hostname-override", NODE_NAME, "--node-ip", node_network.NODE_IP,
        "--pod-infra-container-image", PAUSE_IMAGE, "--v=1",
    ])
    ports = [free_port() for _ in range(2)]
    supervise.spawn(folder, KUBE_PROXY, [
        str(bins.kube_proxy), "--kubeconfig", str(admin_kubeconfig), "--hostname-override", NODE_NAME,
        "--proxy-mode=iptables", "--cluster-cidr", node_network.POD_CIDR,
        # without br_netfilter a reply from a pod on the same bridge would skip the reverse NAT:
        # masquerading service traffic sends every reply back through the node
        "--masquerade-all",
        f"--metrics-bind-address=127.0.0.1:{ports[0]}", f"--healthz-bind-address=127.0.0.1:{ports[1]}",
        # 0: leave the machine's conntrack sysctls alone (setting them needs privileges a sandbox lacks)
        "--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=0", "--conntrack-tcp-timeout-close-wait=0",
    ])
    return t0


def wait_schedulable(folder: Path, client, started: float, echo: Callable[[str], None], deadline: float) -> None:
    """Wait until the kubelet registered the node, it is Ready and its not-ready taint is gone."""
    # a heartbeat from this kubelet: the node object (and its Lease) of a previous start may still look fresh
    since = time.time() - (time.monotonic() - started)
    supervise.wait(folder, KUBELET, lambda: node_state(client, since=since)["schedulable"], deadline)
    echo(f"lmops cluster: node {NODE_NAME} Ready at {node_network.NODE_IP} ({time.monotonic() - started:.1f}s "
         f"after its start; pods on {node_network.POD_CIDR})")


def ctr(sock: Path, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    """``ctr`` against this node's containerd, in the kubelet's namespace."""
    out = subprocess.run(["ctr", "--address", str(sock), "--namespace", K8S_NAMESPACE, *args],
                         capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise ClusterError(f"ctr {' '.join(args)} failed: {out.stderr.strip()[-500:]}")
    return out


def _ctr_ok(sock: Path) -> bool:
    return sock.exists() and ctr(sock, "version", check=False, timeout=10).returncode == 0


def _load_pause_image(folder: Path, bins: binaries.Binaries, sock: Path) -> None:
    if PAUSE_IMAGE in ctr(sock, "images", "ls", "-q").stdout.split():
        return
    archive = oci_archive.write(node_dir(folder) / "pause.oci.tar", PAUSE_IMAGE, {"/pause": bins.pause}, ["/pause"])
    ctr(sock, "images", "import", str(archive))


def _publish_apiserver_endpoint(client, port: int) -> None:
    """The ``kubernetes`` Service's endpoint (the API server runs with --endpoint-reconciler-type=none)."""
    from lmops import kube

    kube.apply({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "kubernetes", "namespace": "default"},
                "subsets": [{"addresses": [{"ip": node_network.NODE_IP}],
                             "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]}, client=client)


# ---------------------------------------------------------------- configuration files
def _containerd_config(folder: Path, sock: Path) -> Path:
    nd = node_dir(folder) / "containerd"
    cni = node_dir(folder) / "cni"
    (cni / "net.d").mkdir(parents=True, exist_ok=True)
    conflist = {
        "cniVersion": "0.4.0", "name": "lmops",
        "plugins": [{"type": "bridge", "bridge": node_network.BRIDGE, "isGateway": True, "ipMasq": False,
                     "hairpinMode": True,
                     "ipam": {"type": "host-local", "dataDir": str(cni / "ipam"),
                              "ranges": [[{"subnet": node_network.POD_CIDR, "gateway": node_network.NODE_IP}]],
                              "routes": [{"dst": "0.0.0.0/0"}]}}],
    }
    (cni / "net.d" / "10-lmops.conflist").write_text(json.dumps(conflist, indent=2) + "\n")
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    text = f"""version = 2
root = "{nd / 'root'}"
state = "{nd / 'state'}"

[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{nd / 'opt'}"
[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  # this machine's root lacks CAP_SYS_RESOURCE: without it every sandbox fails ("can't get final child's PID")
  restrict_oom_score_adj = true
  # network namespaces under our state folder, not the machine's /var/run/netns
  netns_mounts_under_state_dir = true
[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = "{nd / 'state' / 'runc'}"
[{cri}.cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "{cni / 'net.d'}"
"""
    path = nd / "config.toml"
    nd.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _kubelet_config(folder: Path) -> Path:
    nd = node_dir(folder) / "kubelet"
    nd.mkdir(parents=True, exist_ok=True)
    resolv = node_dir(folder) / "resolv.conf"
    resolv.write_text("")  # pods inherit no nameserver of this machine: cluster DNS only
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "address": node_network.NODE_IP, "port": free_port(), "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1", "healthzPort": free_port(),
        # cgroups v1 through cgroupfs, no QoS hierarchy or allocatable enforcement (no systemd here)
        "cgroupDriver": "cgroupfs", "cgroupsPerQOS": False, "enforceNodeAllocatable": [],
        "failSwapOn": False, "evictionHard": {},
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,  # never drop the lmops image
        # the API server is the only client (it listens on 127.0.0.1 on this machine)
        "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
        "authorization": {"mode": "AlwaysAllow"},
        "clusterDNS": [node_network.NODE_IP], "clusterDomain": CLUSTER_DOMAIN, "resolvConf": str(resolv),
        "makeIPTablesUtilChains": False,  # kube-proxy owns the node's iptables rules
        "volumePluginDir": str(nd / "volume-plugins"),
        "serializeImagePulls": False, "rotateCertificates": False,
        # a changed condition (Ready) reaches the API server within 2 s (default 10 s); the Lease heartbeat
        # and the 5-minute unchanged-status report stay as they are
        "nodeStatusUpdateFrequency": "2s",
    }
    path = nd / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _node_kubeconfig(folder: Path, admin_kubeconfig: Path, token: str) -> Path:
    """The kubelet's identity: user system:node:<name> in group system:nodes (the Node authorizer's)."""
    config = yaml.safe_load(admin_kubeconfig.read_text())
    config["users"] = [{"name": f"system:node:{NODE_NAME}", "user": {"token": token}}]
    config["contexts"][0]["context"]["user"] = f"system:node:{NODE_NAME}"
    path = node_dir(folder) / "kubelet.kubeconfig"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


# ---------------------------------------------------------------- status
def node_state(client, since: float | None = None) -> dict[str, Any]:
    """The node as the API server sees it: ready (Ready condition and a fresh heartbeat -- one after the
    time ``since``, when given), schedulable (ready, no NoSchedule/NoExecute taint, not cordoned), the
    heartbeat's age and the taints."""
    from lmops import kube

    try:
        node = kube.get("v1", "Node", NODE_NAME, None, client=client)
    except kube.KubeError:
        node = None
    if node is None:
        return {"name": NODE_NAME, "registered": False, "ready": False, "schedulable": False}
    cond = next((c for c in node.get("status", {}).get("conditions", []) if c["type"] == "Ready"), {})
    # the kubelet's heartbeat is its Lease (renewed every 10 s); the condition's own heartbeat time moves
    # only every 5 minutes while nothing changes
    try:
        lease = kube.get("coordination.k8s.io/v1", "Lease", NODE_NAME, "kube-node-lease", client=client)
    except kube.KubeError:
        lease = None
    age = _age_s((lease or {}).get("spec", {}).get("renewTime") or cond.get("lastHeartbeatTime"))
    fresh = age is not None and age < HEARTBEAT_STALE_S and (since is None or time.time() - age >= since)
    ready = cond.get("status") == "True" and fresh
    taints = [f"{t['key']}:{t['effect']}" for t in node.get("spec", {}).get("taints", [])]
    blocking = [t for t in taints if not t.endswith(":PreferNoSchedule")]
    return {"name": NODE_NAME, "registered": True, "ready": ready, "heartbeat_age_s": age, "taints": taints,
            "schedulable": ready and not blocking and not node.get("spec", {}).get("unschedulable"),
            "address": node_network.NODE_IP, "limits": list(LIMITS)}


def _age_s(stamp: str | None) -> float | None:
    from datetime import datetime, timezone

    if not stamp:
        return None
    return max(0.0, (datetime.now(timezone.utc) - datetime.fromisoformat(stamp.replace("Z", "+00:00"))).total_seconds())


# ---------------------------------------------------------------- down
def stop(folder: Path, kube_proxy: Path | None, echo: Callable[[str], None]) -> list[str]:
    """Stop the node and remove what it made on this machine: containers, mounts, the bridge, iptables
    rules, sysctls, pod log folders. Works from what is there (after a crash too). Returns what was
    running."""
    from lmops.pipeline import servers

    procs = supervise.procs(folder)
    mine = _owns_the_machines_node(folder)  # decided before its processes stop
    was_running = [n for n in ORDER if servers.read_record(n, procs) is not None]
    for name in (KUBE_PROXY, KUBELET, CLUSTER_DNS, API_RELAY):  # the kubelet first: it restarts containers
        servers.stop(name, procs)
    killed = _kill_containers(socket_path(folder))
    servers.stop(CONTAINERD, procs)
    unmounted = _unmount_under(node_dir(folder))
    removed = []
    if mine:  # the bridge, the rules and the pod logs are the machine's node's: never another cluster's
        removed = node_network.teardown(node_dir(folder), kube_proxy)
        _remove_pod_logs(node_dir(folder))
        OWNER_FILE.unlink(missing_ok=True)
    if killed or unmounted or removed:
        echo(f"lmops cluster: node cleaned up ({killed} container processes, {unmounted} mounts; "
             f"{', '.join(removed) or 'no network left'})")
    return was_running


def _kill_containers(sock: Path) -> int:
    """SIGKILL every containerd shim of our containerd and every process under it (the containers)."""
    shims = [int(p.parent.name) for p in Path("/proc").glob("[0-9]*/cmdline") if _is_shim_of(p, sock)]
    # the containers before their shims: a shim must not reap and restart them
    victims = [pid for shim in shims for pid in reversed(descendants(shim))] + shims
    sockets = _unix_sockets_of(shims)
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(p) for p in victims):
        time.sleep(0.1)
    for path in sockets:  # a killed shim leaves its socket (under /run/containerd/s, not our folder)
        Path(path).unlink(missing_ok=True)
    return len(victims)


def _is_shim_of(cmdline: Path, sock: Path) -> bool:
    try:
        cmd = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return "containerd-shim" in cmd and str(sock) in cmd


def _unix_sockets_of(pids: list[int]) -> list[str]:
    """The paths of the unix sockets these processes hold open (a shim's listening socket)."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*") if Path(f"/proc/{pid}/fd").is_dir() else []:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
    paths = []
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 8 and cols[6] in inodes and cols[7].startswith("/run/containerd/s/"):
            paths.append(cols[7])
    return paths


def mounts_under(folder: Path) -> list[str]:
    """Mount points at or below ``folder`` (the kubelet's and containerd's), deepest first."""
    prefix = str(folder.resolve())
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return sorted(set(points), key=lambda p: p.count("/"), reverse=True)


def _unmount_under(folder: Path) -> int:
    points = mounts_under(folder)
    for point in points:
        # lazy: a mount still busy (a dying process) is detached now and freed when the last user goes
        subprocess.run(["umount", "-l", point], capture_output=True)
    return len(points)


# The kubelet of 1.20 writes container logs under these fixed paths (not under its root dir).
POD_LOG_DIRS = (Path("/var/log/pods"), Path("/var/log/containers"))


def _remove_pod_logs(nd: Path) -> None:
    """Remove the pod log folders this node wrote (those changed since it started)."""
    try:
        since = float((nd / "started-at").read_text())
    except (OSError, ValueError):
        return
    for base in POD_LOG_DIRS:
        if not base.is_dir():
            continue
        for entry in base.iterdir():
            try:
                if entry.lstat().st_mtime >= since - 1:
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            except OSError:
                pass
