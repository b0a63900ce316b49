"""Benchmark: the operator's reaction times on `lmops cluster` (real API server, KServe stand-in making predictor
pods of the lmops image on the node, real MLflow).

    flock /tmp/lmops-node.lock .venv/bin/python bench/operator.py [--rounds 3] [--operator pod|process]

Starts its own control plane and node (the machine's one node: run it under the node lock), builds and loads
the lmops image (cached by its build key), an MLflow server (webhooks allowed; pods reach it through a relay on
the node's address) and the operator -- in its pod from the Helm chart (``--operator pod``, the default: MLflow
posts webhooks to its Service) or as a process with the ServiceAccount token of manifests/rbac -- registers four versions
(two good, one that scores worse, one that does not load):
- ``webhook -> canary``: an alias change (MLflow delivers the webhook) to the canary InferenceService
  applied, with a 30 s poll that cannot be what woke it; target <= 2 s. And on to ``canary pod Ready``: the
  canary revision's pod ready and listed in the InferenceService's traffic (pod start, model load).
- ``poll -> canary``: the same with webhooks off and ``--poll-seconds 5``: bounded by the poll interval.
- ``failing gate -> rollback done``: from the first sight of ``phase: RollingBack`` (the failing gate's
  decision, recorded before acting) to the alias back on the stable version and the InferenceService's
  status showing all traffic on the stable revision; target <= 5 s. Server starts per rollback: revisions
  created from the decision until Stable (KServe's rollback, canaryTrafficPercent 0: none).
Baseline: one server-side apply of the InferenceService plus one alias move in MLflow, the least a
rollback must do; the ratio is the figure to compare across machines. Status is watched every 20 ms.
"""

from __future__ import annotations

import os
import sys

# bench/ holds tokenize.py, which would shadow the stdlib module of that name: take this folder off sys.path
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
_REPO = os.path.dirname(_HERE)
sys.path[:0] = [os.path.join(_REPO, "tests", "cluster"), os.path.join(_REPO, "tests", "registry")]

import argparse  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from operator_world import (SECRET, install_operator_pod, md_body, register_versions,  # noqa: E402
                            service_account_kubeconfig, start_operator)

from lmops import kube  # noqa: E402
from lmops.crd import API_VERSION  # noqa: E402
from lmops.operator.local import wait_until  # noqa: E402

ISVC = ("serving.kserve.io/v1beta1", "InferenceService")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StatusLog(threading.Thread):
    """Every status the API server reports for the deployment, with the time it arrived (a watch: the
    RollingBack phase lasts a fraction of a second, too short to be sure to see by polling)."""

    def __init__(self, client, ns: str, name: str):
        super().__init__(daemon=True)
        self.client, self.ns, self.name = client, ns, name
        self.seen: list[tuple[float, dict]] = []

    def run(self) -> None:
        for _, obj in kube.Watch(API_VERSION, "ModelDeployment", self.ns, client=self.client):
            if obj["metadata"]["name"] == self.name:
                self.seen.append((time.monotonic(), obj.get("status") or {}))

    def first(self, predicate, after: float) -> float | None:
        return next((t for t, s in list(self.seen) if t >= after and predicate(s)), None)


class World:
    def __init__(self, admin, ns: str, name: str, model: str, mlflow):
        self.admin, self.ns, self.name, self.model, self.mlflow = admin, ns, name, model, mlflow
        self.log = StatusLog(admin, ns, name)
        self.log.start()

    def status(self) -> dict:
        return (kube.get(API_VERSION, "ModelDeployment", self.name, self.ns, client=self.admin) or {}).get("status") or {}

    def annotations(self) -> dict:
        return ((kube.get(*ISVC, self.name, self.ns, client=self.admin) or {}).get("metadata") or {}).get("annotations") or {}

    def alias(self) -> str:
        return str(self.mlflow.get_model_version_by_alias(self.model, "champion").version)

    def set_alias(self, version: str) -> float:
        t = time.monotonic()
        self.mlflow.set_registered_model_alias(self.model, "champion", version)
        return t

    def stable(self, version: str) -> bool:
        s = self.status()
        return s.get("phase") == "Stable" and s.get("stableVersion") == version and any(
            c["type"] == "Ready" and c["status"] == "True" for c in s.get("conditions") or [])

    def predictor(self) -> dict:
        return (((kube.get(*ISVC, self.name, self.ns, client=self.admin) or {}).get("status") or {})
                .get("components") or {}).get("predictor") or {}

    def created(self) -> int:
        return int(self.predictor()["latestCreatedRevision"].rsplit("-", 1)[1])

    def time_to_canary(self, version: str) -> tuple[float, float]:
        """(alias -> canary InferenceService applied, alias -> canary pod Ready and in the traffic)"""
        t0 = self.set_alias(version)
        wait_until(lambda: self.annotations().get("lmops.dev/canary-version") == version, 120, 0.02, "canary")
        applied = time.monotonic() - t0
        wait_until(lambda: any(t.get("tag") == "latest" for t in self.predictor().get("traffic") or []), 300, 0.05,
                   "canary pod Ready")
        ready = time.monotonic() - t0
        wait_until(lambda: self.stable(version), 300, 0.2, "promotion")
        return applied, ready

    def all_on_stable(self, stable: str) -> bool:
        traffic = self.predictor().get("traffic") or []
        return (self.annotations().get("lmops.dev/stable-version") == stable and len(traffic) == 1
                and traffic[0]["percent"] == 100 and self.predictor().get("latestRolledoutRevision") == traffic[0]["revisionName"])

    def time_to_rollback(self, bad: str, stable: str) -> tuple[float, int]:
        """(rollback decision -> alias and all traffic back on stable, revisions created meanwhile)"""
        t_set = self.set_alias(bad)
        t0 = wait_until(lambda: self.log.first(lambda s: s.get("phase") == "RollingBack", t_set), 300, 0.02,
                        "rollback decision")
        n0 = self.created()
        wait_until(lambda: self.alias() == stable and self.all_on_stable(stable), 120, 0.02, "rollback done")
        took = time.monotonic() - t0
        wait_until(lambda: self.stable(stable), 120, 0.2, "stable again")
        return took, self.created() - n0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--operator", choices=("pod", "process"), default="pod",
                    help="the operator in its pod (helm install of helm/lmops) or as a process")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from mlflow import MlflowClient

    from lmops.cluster import control_plane
    from lmops.registry.local_server import LOCAL_WEBHOOK_ENV, start_mlflow_server, stop_process_group

    from lmops.cluster import node_images, pod_relay
    from lmops.images.build import build
    from lmops.images.engine import detect

    root = Path(tempfile.mkdtemp(prefix="bench-operator-"))
    engine = detect(install=True)
    built = build("cpu", engine=engine, log=lambda line: None)
    t = time.monotonic()
    cluster = control_plane.up(root / "cluster", echo=lambda line: None)
    os.environ["KUBECONFIG"] = cluster.kubeconfig
    mlflow_proc, mlflow_url = start_mlflow_server(root / "mlflow", str(root / "mlflow" / "artifacts"), env=LOCAL_WEBHOOK_ENV)
    node_images.load(root / "cluster", built.ref, engine, log=lambda line: None)
    # MLflow as the predictor pods reach it (they resolve models:/ themselves); this machine reaches it too
    relay, pods_mlflow = pod_relay.start(mlflow_url)
    print(f"cluster, MLflow and the image on the node in {time.monotonic() - t:.1f}s", flush=True)
    op = None
    try:
        admin = cluster.client()
        ns = "bench"
        kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}, client=admin)
        kubeconfig, _ = service_account_kubeconfig(cluster, ns, root / "sa.kubeconfig")
        model, v = register_versions(mlflow_url, root / "versions")
        mlflow = MlflowClient(mlflow_url)
        w = World(admin, ns, "bench", model, mlflow)
        w.set_alias(v["good1"])
        t = time.monotonic()
        if args.operator == "pod":
            op = install_operator_pod(cluster, ns, pods_mlflow, built.ref, poll_s=30, webhooks=True)
        else:
            port = free_port()
            op = start_operator(kubeconfig, ns, pods_mlflow, root / "op", poll_s=30, webhook_port=port)
            wait_until(lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0, 30, 0.1, "webhook receiver")
        print(f"operator ({args.operator}) up in {time.monotonic() - t:.1f}s", flush=True)
        hook = mlflow.create_webhook(name="bench", url=op.webhook_url, secret=SECRET, events=["model_version_alias.created"])
        kube.apply({**md_body("bench", model), "metadata": {"name": "bench", "namespace": ns}}, client=admin)
        wait_until(lambda: w.stable(v["good1"]), 300, 0.2, "first version")

        webhook, pod_ready, rollback, starts, poll = [], [], [], [], []
        current = v["good1"]
        for _ in range(args.rounds):
            nxt = v["good2"] if current == v["good1"] else v["good1"]
            applied, ready = w.time_to_canary(nxt)
            webhook.append(applied)
            pod_ready.append(ready)
            current = nxt
            took, started = w.time_to_rollback(v["worse"], current)
            rollback.append(took)
            starts.append(started)
            print(f"  webhook -> canary {webhook[-1]:.2f}s, canary pod Ready {pod_ready[-1]:.2f}s; failing gate -> "
                  f"rollback done {rollback[-1]:.2f}s ({started} server starts)", flush=True)
        mlflow.delete_webhook(hook.webhook_id)
        if args.operator == "pod":  # the operator's pod killed (grace 0): until the Deployment's next one runs, is Ready
            t0 = time.monotonic()
            killed = op.kill()
            running = wait_until(lambda: (p := op.pod()) and p["metadata"]["name"] != killed and any(
                (c.get("state") or {}).get("running") for c in p["status"].get("containerStatuses") or []), 120, 0.1,
                "a new operator pod") and time.monotonic() - t0
            wait_until(lambda: any(c["type"] == "Ready" and c["status"] == "True"
                                   for c in (op.pod() or {}).get("status", {}).get("conditions") or []), 120, 0.1, "Ready")
            print(f"  operator pod killed -> the next one running {running:.1f}s, Ready {time.monotonic() - t0:.1f}s",
                  flush=True)
        op.stop()
        op = (install_operator_pod(cluster, ns, pods_mlflow, built.ref, poll_s=5) if args.operator == "pod"
              else start_operator(kubeconfig, ns, pods_mlflow, root / "op", poll_s=5))
        for _ in range(args.rounds):
            nxt = v["good2"] if current == v["good1"] else v["good1"]
            poll.append(w.time_to_canary(nxt)[0])
            current = nxt
            print(f"  poll (5 s) -> canary {poll[-1]:.2f}s", flush=True)

        # baseline: the least a rollback does -- one server-side apply of the InferenceService, one alias move
        isvc = kube.get(*ISVC, "bench", ns, client=admin)
        body = {"apiVersion": isvc["apiVersion"], "kind": isvc["kind"],
                "metadata": {"name": "bench", "namespace": ns, "annotations": isvc["metadata"]["annotations"]},
                "spec": isvc["spec"]}
        base = []
        for _ in range(5):
            t0 = time.monotonic()
            kube.apply(body, client=admin)
            mlflow.set_registered_model_alias(model, "bench-baseline", current)
            base.append(time.monotonic() - t0)
        med = {k: statistics.median(x) for k, x in (("webhook", webhook), ("rollback", rollback), ("poll", poll),
                                                    ("base", base))}
        print(f"\nwebhook delivery -> canary InferenceService: median {med['webhook']:.2f}s "
              f"(min {min(webhook):.2f}, max {max(webhook):.2f}; target <= 2 s; poll was 30 s)")
        print(f"webhook delivery -> canary pod Ready (in the traffic): median {statistics.median(pod_ready):.2f}s "
              f"(min {min(pod_ready):.2f}, max {max(pod_ready):.2f})")
        print(f"alias change, webhooks off, poll 5 s -> canary: median {med['poll']:.2f}s "
              f"(min {min(poll):.2f}, max {max(poll):.2f}; bound 5 s + one reconcile)")
        print(f"failing gate decision -> rollback done (alias + traffic): median {med['rollback']:.2f}s "
              f"(min {min(rollback):.2f}, max {max(rollback):.2f}; target <= 5 s); server starts per rollback: "
              f"{statistics.mean(starts):.1f}")
        print(f"baseline (one InferenceService apply + one alias move): {med['base'] * 1000:.0f} ms; "
              f"rollback / baseline x{med['rollback'] / med['base']:.1f}")
    finally:
        if op is not None:
            op.stop()
        pod_relay.stop(relay)
        stop_process_group(mlflow_proc)
        control_plane.down(root / "cluster", echo=lambda line: None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
