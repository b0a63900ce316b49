"""The node's network on this machine: one bridge (``lmops0``, the node's address 10.244.0.1) that the
CNI bridge plugin attaches pods to, the two sysctls forwarding needs, a rule that keeps pod traffic
on this machine and a route that keeps service traffic on it. Everything made here is undone by
``teardown`` (also after a crash: it works from what the kernel shows, not from what a process
remembers)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from lmops.cluster.supervise import ClusterError

BRIDGE = "lmops0"
POD_CIDR = "10.244.0.0/24"
NODE_IP = "10.244.0.1"  # the bridge's address: the node's InternalIP, the gateway, cluster DNS, API relay
SERVICE_CIDR = "10.96.0.0/16"
# Forwarded pod traffic may only go to other pods (service addresses are rewritten to pod addresses
# before this rule sees them): nothing leaves this machine from a pod, whatever it runs.
EGRESS_RULE = ["FORWARD", "-i", BRIDGE, "!", "-o", BRIDGE, "-m", "comment", "--comment", "lmops-node: pods stay on this machine",
               "-j", "DROP"]
# ip_forward: service traffic is DNATed and routed back onto the bridge; route_localnet: kube-proxy's
# iptables mode sets it (1.20 always does). Both are restored at teardown.
SYSCTLS = {"net.ipv4.ip_forward": "1", "net.ipv4.conf.all.route_localnet": None}


def setup(node_dir: Path) -> None:
    """The bridge with the node's address, forwarding on, the egress rule (each only when missing)."""
    _remember_sysctls(node_dir)
    if _run(["ip", "link", "show", BRIDGE], check=False).returncode != 0:
        _run(["ip", "link", "add", BRIDGE, "type", "bridge"])
    if NODE_IP not in _run(["ip", "-4", "addr", "show", "dev", BRIDGE]).stdout:
        _run(["ip", "addr", "add", f"{NODE_IP}/24", "dev", BRIDGE])
    _run(["ip", "link", "set", BRIDGE, "up"])
    for key, value in SYSCTLS.items():
        if value is not None:
            _sysctl(key, value)
    if _run(["iptables", "-C", *EGRESS_RULE], check=False).returncode != 0:
        _run(["iptables", "-I", *EGRESS_RULE])
    # Service addresses onto the bridge: kube-proxy rewrites one it has programmed to a pod's address, but a
    # connection from this machine to one it has not programmed yet (a new Service, a kube-proxy catching up)
    # would follow the default route off the machine -- and may be answered there (a network's HTTP proxy).
    # On the bridge nobody answers it: the connection fails here. The route goes with the bridge.
    _run(["ip", "route", "replace", SERVICE_CIDR, "dev", BRIDGE, "src", NODE_IP])


def teardown(node_dir: Path, kube_proxy: Path | None) -> list[str]:
    """Undo ``setup`` and what kube-proxy wrote; returns what was removed (for the log)."""
    removed = []
    if kube_proxy is not None and _kube_rules_present():
        # kube-proxy's own cleanup removes its rules and most chains (iptables and ipvs modes) ...
        _run([str(kube_proxy), "--cleanup"], check=False)
        removed.append("kube-proxy iptables rules")
    # ... but 1.20 leaves KUBE-PROXY-CANARY and KUBE-MARK-* (a kubelet's, elsewhere) behind, unreferenced
    for table in ("filter", "nat", "mangle"):
        chains = [line.split()[1] for line in _run(["iptables", "-t", table, "-S"], check=False).stdout.splitlines()
                  if line.startswith("-N KUBE-")]
        for flag in ("-F", "-X"):
            for chain in chains:
                _run(["iptables", "-t", table, flag, chain], check=False)
    while _run(["iptables", "-C", *EGRESS_RULE], check=False).returncode == 0:
        _run(["iptables", "-D", *EGRESS_RULE])
        removed.append("egress rule")
    if _run(["ip", "link", "show", BRIDGE], check=False).returncode == 0:
        _run(["ip", "link", "delete", BRIDGE])
        removed.append(f"bridge {BRIDGE}")
    saved = node_dir / "sysctl-before.json"
    if saved.is_file():
        for key, value in json.loads(saved.read_text()).items():
            _sysctl(key, value)
        saved.unlink()
        removed.append("sysctls restored")
    return removed


def leftovers() -> list[str]:
    """What of the node's network is still on this machine (empty after a clean teardown)."""
    found = []
    if _run(["ip", "link", "show", BRIDGE], check=False).returncode == 0:
        found.append(f"network interface {BRIDGE}")
    veths = _run(["ip", "-o", "link", "show", "master", BRIDGE], check=False).stdout.strip()
    if veths:
        found.append(f"interfaces on {BRIDGE}: {veths}")
    if _run(["iptables", "-C", *EGRESS_RULE], check=False).returncode == 0:
        found.append("iptables egress rule")
    if _kube_rules_present():
        found.append("iptables KUBE-* chains")
    return found


def _kube_rules_present() -> bool:
    dump = _run(["iptables-save"], check=False).stdout
    return any(line.startswith(":KUBE-") for line in dump.splitlines())


def _remember_sysctls(node_dir: Path) -> None:
    # Written once, before the first change: a second `up` after a crash must not record our own values.
    saved = node_dir / "sysctl-before.json"
    if not saved.is_file():
        node_dir.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps({key: _sysctl(key) for key in SYSCTLS}) + "\n")


def _sysctl(key: str, value: str | None = None) -> str:
    path = Path("/proc/sys") / key.replace(".", "/")
    if value is not None:
        path.write_text(value)
    return path.read_text().strip()


def _run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True)
    if check and out.returncode != 0:
        raise ClusterError(f"`{' '.join(cmd)}` failed: {out.stderr.strip() or out.stdout.strip()}")
    return out
