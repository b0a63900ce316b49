"""The local cluster: etcd, kube-apiserver, kube-controller-manager and kube-scheduler on 127.0.0.1, a
node (lmops.cluster.node: containerd, kubelet, kube-proxy, cluster DNS) and the KServe / KubeRay
stand-ins, as processes recorded under ``<state>/cluster`` (``lmops cluster up``).

- Every process runs in its own process group, recorded (``processes/<name>.json``, the same records
  ``lmops stop`` keeps for the local servers) the moment it is spawned, so ``down`` -- or an ``up``
  interrupted half-way -- stops exactly what was started, children included.
- RBAC is on. The admin token (group ``system:masters``) is in ``tokens.csv`` and in the kubeconfig
  ``up`` writes; tests that need a weaker identity make a ServiceAccount and use its token.
- ``up`` is idempotent: a running control plane is reported and reused; one whose processes died
  (a reboot, a kill) is cleaned up and started again on the same etcd data.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lmops.cluster import binaries, node, node_network, supervise
from lmops.cluster.supervise import ClusterError
from lmops.pipeline import servers
from lmops.processes import free_port

# Start order; down stops them in reverse.
ETCD, APISERVER, CONTROLLER_MANAGER, SCHEDULER = "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"
KUBERAY_STANDIN, KSERVE_STANDIN = "kuberay-standin", "kserve-standin"
ORDER = (ETCD, APISERVER, CONTROLLER_MANAGER, SCHEDULER, KUBERAY_STANDIN, KSERVE_STANDIN)
STANDIN_MODULES = {KUBERAY_STANDIN: "lmops.cluster.kuberay_standin", KSERVE_STANDIN: "lmops.cluster.kserve_standin"}
# What a one-node cluster without a cloud needs: namespaces, owner references, ServiceAccount tokens,
# workloads (Deployments, Jobs, ...), Service endpoints (mirrored into the EndpointSlices kube-proxy
# reads), and the node's lifecycle (its not-ready taint is removed once it is Ready).
CONTROLLERS = ("namespace,garbagecollector,serviceaccount,serviceaccount-token,deployment,replicaset,"
               "statefulset,daemonset,job,cronjob,endpoint,endpointslice,endpointslicemirroring,podgc,nodelifecycle")
ADMIN_USER = "lmops-admin"
READY_TIMEOUT_S = 120.0


@dataclass
class Cluster:
    """What a running control plane is: where to reach it and where its files are."""

    folder: str
    server: str
    token: str
    kubeconfig: str
    ca_file: str
    ports: dict[str, int]
    node: str | None = None  # the node's name; None with --no-node

    def client(self, token: str | None = None):
        """A kubernetes ApiClient: the admin's, or one with another bearer token (a ServiceAccount's)."""
        from kubernetes import client

        from lmops import kube

        if token is None:
            return kube.api_client(self.kubeconfig)
        conf = client.Configuration()
        conf.host, conf.ssl_ca_cert = self.server, self.ca_file
        conf.api_key = {"authorization": f"Bearer {token}"}
        return client.ApiClient(conf)


def default_folder() -> Path:
    return servers.state_dir() / "cluster"


def _info_path(folder: Path) -> Path:
    return folder / "cluster.json"


# ---------------------------------------------------------------- up
def up(folder: Path | None = None, *, port: int | None = None, standins: bool = True, with_node: bool = True,
       echo: Callable[[str], None] = print, timeout_s: float = READY_TIMEOUT_S) -> Cluster:
    """Start the control plane and the node (or report the running ones); returns how to reach it.

    ``port``: the API server's port (default: a free one); taken already -> ClusterError naming it.
    """
    folder = (folder or default_folder()).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    with _lock(folder, echo):
        running = status(folder)
        if running["state"] == "running":
            cluster = Cluster(**running["cluster"])
            pids = ", ".join(f"{n} {r['pid']}" for n, r in running["processes"].items())
            echo(f"lmops cluster: already running at {cluster.server} ({pids}); reusing it")
            return cluster
        if running["state"] != "stopped":
            echo(f"lmops cluster: cleaning up a stale control plane in {folder} ({running['state']})")
            _stop_all(folder)
        bins = binaries.ensure(echo)
        if with_node:
            node.ensure_packages(echo)
        if port is not None:
            _check_free(port)
        if with_node:
            node.check_machine_free(folder)
        try:
            return _start(folder, bins, port, standins, with_node, echo, timeout_s)
        except BaseException:
            # Ctrl-C or a failed step: nothing of a half-started control plane stays behind
            _stop_all(folder)
            raise


def _start(folder: Path, bins: binaries.Binaries, port: int | None, standins: bool, with_node: bool,
           echo: Callable[[str], None], timeout_s: float) -> Cluster:
    t0 = time.monotonic()
    deadline = t0 + timeout_s
    logs = folder / "logs"
    logs.mkdir(exist_ok=True)
    ports = {"etcd": free_port(), "etcd_peer": free_port(), "apiserver": port or free_port()}
    token, node_token, ca_file = _credentials(folder)
    server = f"https://127.0.0.1:{ports['apiserver']}"

    etcd_url = f"http://127.0.0.1:{ports['etcd']}"
    supervise.spawn(folder, ETCD, [str(bins.etcd), "--name", "lmops", "--data-dir", str(folder / "etcd"),
                                   "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
                                   "--listen-peer-urls", f"http://127.0.0.1:{ports['etcd_peer']}",
                                   "--initial-advertise-peer-urls", f"http://127.0.0.1:{ports['etcd_peer']}",
                                   "--initial-cluster", f"lmops=http://127.0.0.1:{ports['etcd_peer']}",
                                   "--unsafe-no-fsync"])  # test data: durability is not worth the fsync latency
    supervise.wait(folder, ETCD, lambda: supervise.http_ok(f"{etcd_url}/health"), deadline)
    pki = folder / "pki"
    supervise.spawn(folder, APISERVER, [
        str(bins.kube_apiserver), "--etcd-servers", etcd_url,
        "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={ports['apiserver']}",
        "--insecure-port=0",  # 1.20 still opens an unauthenticated port (8080) unless told not to
        "--cert-dir", str(pki), "--token-auth-file", str(folder / "tokens.csv"),
        "--service-account-key-file", str(pki / "sa.key"), "--service-account-signing-key-file", str(pki / "sa.key"),
        "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
        # Node: the kubelet (user system:node:<name>) sees only its own pods' secrets and config maps
        "--authorization-mode=Node,RBAC", f"--service-cluster-ip-range={node_network.SERVICE_CIDR}",
        "--endpoint-reconciler-type=none",  # the node publishes the `kubernetes` endpoint (its relay)
        "--kubelet-preferred-address-types=InternalIP",  # logs/exec: the node's address, not its name
        # ConfigMaps are read from etcd, not the watch cache (which on a young server still holds every
        # event): compacting etcd then expires old resourceVersions (410 Gone), which the tests of
        # lmops.kube.Watch need to provoke. Nothing here watches ConfigMaps at volume.
        "--watch-cache-sizes=configmaps#0",
    ])
    supervise.wait(folder, APISERVER, lambda: supervise.http_ok(f"{server}/readyz", token, ca_file), deadline)
    # The self-signed serving certificate exists once the server listens: the kubeconfig trusts it.
    kubeconfig = _write_kubeconfig(folder, server, token, pki / "apiserver.crt")
    cluster = Cluster(folder=str(folder), server=server, token=token, kubeconfig=str(kubeconfig),
                      ca_file=str(pki / "apiserver.crt"), ports=ports, node=node.NODE_NAME if with_node else None)
    echo(f"lmops cluster: API server ready at {server} ({time.monotonic() - t0:.1f}s)")
    supervise.spawn(folder, CONTROLLER_MANAGER, [
        str(bins.kube_controller_manager), "--kubeconfig", str(kubeconfig), f"--controllers={CONTROLLERS}",
        "--service-account-private-key-file", str(pki / "sa.key"), "--root-ca-file", str(pki / "apiserver.crt"),
        "--leader-elect=false", "--secure-port=0", "--port=0",  # no serving ports: nothing to collide
        "--use-service-account-credentials=false",
        # the node's not-ready taint goes within a second of its Ready condition (default: a 5 s period)
        "--node-monitor-period=1s",
    ])
    supervise.spawn(folder, SCHEDULER, [str(bins.kube_scheduler), "--kubeconfig", str(kubeconfig), "--leader-elect=false",
                                        "--port=0", "--secure-port=0"])
    if standins:
        # started before the CRDs are served (their watches retry until then): their imports overlap
        # the seconds the API server spends on the large CRDs' schemas
        for name, module in STANDIN_MODULES.items():
            supervise.spawn(folder, name, [sys.executable, "-m", module, "--kubeconfig", str(kubeconfig)],
                            env={"PYTHONUNBUFFERED": "1"})
    from lmops.cluster import crds

    # the node starts before the CRDs: its registration and readiness overlap their installation
    node_started = node.start(folder, bins, apiserver_port=ports["apiserver"], admin_kubeconfig=kubeconfig,
                              node_token=node_token, client=cluster.client(), deadline=deadline) if with_node else None
    installed = crds.install(cluster.client(), deadline=deadline)
    echo(f"lmops cluster: CRDs installed and served ({time.monotonic() - t0:.1f}s): {', '.join(installed)}")
    # The default ServiceAccount appears once the controller-manager works: the last sign of life.
    supervise.wait(folder, CONTROLLER_MANAGER, lambda: _default_sa(cluster), deadline)
    if node_started is not None:
        node.wait_schedulable(folder, cluster.client(), node_started, echo, deadline)
    _write_json(_info_path(folder), asdict(cluster))
    echo(f"lmops cluster: ready in {time.monotonic() - t0:.1f}s")
    return cluster


# ---------------------------------------------------------------- down / status
def down(folder: Path | None = None, echo: Callable[[str], None] = print) -> list[str]:
    """Stop every process of the control plane; returns the names that were running. Data stays."""
    folder = (folder or default_folder()).resolve()
    with _lock(folder, echo):
        stopped = _stop_all(folder)
    echo("lmops cluster: stopped " + (", ".join(stopped) if stopped else "nothing (not running)"))
    return stopped


def status(folder: Path | None = None) -> dict[str, Any]:
    """``state``: running (every process up and the API server answering), stopped (no process, or never
    started), or a word on what is wrong (partly running, not answering); plus the processes and the
    cluster's record."""
    folder = (folder or default_folder()).resolve()
    alive = servers.running(supervise.procs(folder))
    recorded = sorted(p.stem for p in supervise.procs(folder).glob("*.json")) if supervise.procs(folder).is_dir() else []
    info = _read_json(_info_path(folder))
    out: dict[str, Any] = {"folder": str(folder), "processes": alive, "cluster": info}
    if not alive:
        out["state"] = "stopped" if not recorded else f"stale: {', '.join(recorded)} recorded but not running"
    elif info is None or set(recorded) - set(alive):
        dead = sorted(set(recorded) - set(alive))
        out["state"] = f"partly running ({', '.join(dead) + ' not running' if dead else 'start-up not finished'})"
    elif not supervise.http_ok(f"{info['server']}/readyz", info["token"], info["ca_file"]):
        out["state"] = f"not answering: {info['server']}/readyz"
    else:
        out["state"] = "running"
        if info.get("node"):
            out["node"] = node.node_state(Cluster(**info).client())
            if not out["node"]["ready"]:
                out["state"] = f"node {info['node']} not ready"
    return out


def kubeconfig(folder: Path | None = None) -> Path:
    info = _read_json(_info_path((folder or default_folder()).resolve()))
    if info is None:
        raise ClusterError("no control plane here: run `lmops cluster up` first")
    return Path(info["kubeconfig"])


def _stop_all(folder: Path) -> list[str]:
    was_running = servers.running(supervise.procs(folder))
    for name in reversed(ORDER[ORDER.index(SCHEDULER) + 1:]):  # the stand-ins first: they talk to the API server
        servers.stop(name, supervise.procs(folder))
    bins = binaries.find()
    # the node next, while the API server still answers; its cleanup works from what is on the machine
    # (containers, mounts, the bridge, iptables), so a crashed node is cleaned up too
    node.stop(folder, bins.kube_proxy if bins else None, echo=lambda line: None)
    for name in reversed(ORDER):
        servers.stop(name, supervise.procs(folder))
    for leftover in supervise.procs(folder).glob("*.json") if supervise.procs(folder).is_dir() else []:
        servers.stop(leftover.stem, supervise.procs(folder))
    _info_path(folder).unlink(missing_ok=True)
    return [n for n in (*ORDER, *node.ORDER) if n in was_running]


def _check_free(port: int) -> None:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise ClusterError(f"port {port} on 127.0.0.1 is in use: stop what listens there "
                               f"(ss -ltnp 'sport = :{port}') or choose another --port") from None


# ---------------------------------------------------------------- credentials and kubeconfig
def _credentials(folder: Path) -> tuple[str, str, str]:
    """(admin token, node token, CA file): the token file and service-account key, made once per folder."""
    pki = folder / "pki"
    pki.mkdir(exist_ok=True)
    if not (pki / "sa.key").is_file():
        subprocess.run(["openssl", "genrsa", "-out", str(pki / "sa.key"), "2048"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tokens = folder / "tokens.csv"
    if not tokens.is_file():
        # system:masters passes every RBAC check; the controller-manager uses it too (its own roles
        # assume --use-service-account-credentials and controllers this control plane does not run)
        tokens.write_text(f"{secrets.token_hex(24)},{ADMIN_USER},{ADMIN_USER},\"system:masters\"\n")
        tokens.chmod(0o600)
    node_user = f"system:node:{node.NODE_NAME}"
    if node_user not in tokens.read_text():  # (a folder from before the node existed gets it too)
        with tokens.open("a") as f:
            f.write(f"{secrets.token_hex(24)},{node_user},{node_user},\"system:nodes\"\n")
    rows = {line.split(",")[1]: line.split(",")[0] for line in tokens.read_text().splitlines() if line}
    return rows[ADMIN_USER], rows[node_user], str(pki / "apiserver.crt")


def _write_kubeconfig(folder: Path, server: str, token: str, ca: Path) -> Path:
    import yaml

    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "lmops",
        "clusters": [{"name": "lmops", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": ADMIN_USER, "user": {"token": token}}],
        "contexts": [{"name": "lmops", "context": {"cluster": "lmops", "user": ADMIN_USER, "namespace": "default"}}],
    }
    path = folder / "kubeconfig"
    tmp = path.with_name(".kubeconfig.tmp")
    tmp.write_text(yaml.safe_dump(config, sort_keys=False))
    tmp.chmod(0o600)
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------- small helpers
def _default_sa(cluster: Cluster) -> bool:
    from lmops import kube

    try:
        return kube.get("v1", "ServiceAccount", "default", "default", client=cluster.client()) is not None
    except kube.KubeError:
        return False


@contextlib.contextmanager
def _lock(folder: Path, echo: Callable[[str], None]) -> Iterator[None]:
    """One `up`/`down` at a time per folder (two test sessions, or a user and `make test`)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            echo(f"lmops cluster: another `lmops cluster` command holds {folder}; waiting")
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def interrupts_recorded() -> Iterator[list[int]]:
    """SIGINT and SIGTERM raise KeyboardInterrupt while inside (`up` cleans up the same way for both), and are
    recorded: Python drops an exception raised while it runs a finalizer, so an interrupted `up` can return."""
    received: list[int] = []

    def handler(signum, frame):
        received.append(signum)
        raise KeyboardInterrupt(f"signal {signum}")

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)
