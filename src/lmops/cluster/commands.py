"""``lmops cluster up | down | status | kubeconfig``: progress on stderr, the one useful line on stdout
(``up`` prints ``export KUBECONFIG=...``, so ``eval "$(lmops cluster up)"`` works)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub) -> None:
    sp = sub.add_parser("cluster", help="a local Kubernetes cluster (etcd, kube-apiserver, controller-manager, scheduler;"
                                        " a node: containerd, kubelet, kube-proxy, cluster DNS; KServe/KubeRay"
                                        " stand-ins) under the state folder")
    sp.add_argument("action", choices=["up", "down", "status", "kubeconfig"])
    sp.add_argument("--folder", help="where its state and logs live (default: <state>/cluster; $LMOPS_STATE_DIR)")
    sp.add_argument("--port", type=int, help="up: the API server's port (default: a free one)")
    sp.add_argument("--no-standins", action="store_true", help="up: without the KServe and KubeRay stand-ins")
    sp.add_argument("--no-node", action="store_true", help="up: the control plane alone (no kubelet: pods stay Pending)")
    sp.add_argument("--json", action="store_true", help="print the result as JSON")
    sp.set_defaults(fn=cmd_cluster)


def cmd_cluster(args: argparse.Namespace) -> dict:
    from dataclasses import asdict

    from lmops.cluster import control_plane as cp

    folder = Path(args.folder) if args.folder else None
    echo = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    if args.action == "up":
        started_here = cp.status(folder)["state"] != "running"
        with cp.interrupts_recorded() as received:
            cluster = cp.up(folder, port=args.port, standins=not args.no_standins, with_node=not args.no_node,
                            echo=echo)
            if received and started_here:  # interrupted, but the KeyboardInterrupt was dropped: undo it all the same
                cp.down(folder, echo=echo)
                raise KeyboardInterrupt(f"signal {received[0]}")
        if not args.json:
            print(f"export KUBECONFIG={cluster.kubeconfig}")
        return asdict(cluster)
    if args.action == "down":
        return {"stopped": cp.down(folder, echo=echo)}
    if args.action == "kubeconfig":
        path = cp.kubeconfig(folder)
        if not args.json:
            print(path)
        return {"kubeconfig": str(path)}
    st = cp.status(folder)
    if not args.json:
        print(f"state: {st['state']} ({st['folder']})")
        if st["cluster"]:
            print(f"server: {st['cluster']['server']}\nkubeconfig: {st['cluster']['kubeconfig']}")
        for name, rec in st["processes"].items():
            print(f"  {name}: pid {rec['pid']}, log {rec['log']}")
        if st.get("node"):
            n = st["node"]
            age = f"{n['heartbeat_age_s']:.0f}s ago" if n.get("heartbeat_age_s") is not None else "never"
            print(f"node {n['name']}: {'Ready' if n['ready'] else 'NOT ready'}"
                  f"{', schedulable' if n['schedulable'] else ', not schedulable'} (heartbeat {age}"
                  f"{'; taints ' + ', '.join(n['taints']) if n.get('taints') else ''})")
            for limit in n.get("limits", []):
                print(f"  unlike a real node: {limit}")
    if st["state"] not in ("running", "stopped"):
        raise SystemExit(1)
    return st
