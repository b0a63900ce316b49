"""KServe stand-in: plays KServe's InferenceService controller (serverless mode, with Knative's part in it) on
`lmops cluster`. It makes the objects KServe and Knative would, and the pods run the predictor as rendered;
the stand-in itself never runs workload code.

For each InferenceService (serving.kserve.io/v1beta1):
- each change of ``spec.predictor`` other than ``canaryTrafficPercent`` is a new revision
  ``<name>-predictor-0000N`` (Knative's naming), made of
  - a Deployment ``<revision>-deployment`` whose pod is the predictor's PodSpec as rendered (its container
    with image, command, args, env, envFrom, resources, probes, security context; its volumes, service
    account, tolerations, node selector), plus what KServe's pod mutator injects when the predictor has a
    storage URI (``storageUri``, or the container's STORAGE_URI): the ``storage-initializer`` init
    container (here from the predictor's own image: ``python -m lmops.serve.storage_initializer``, see
    that module) that downloads the model into the emptyDir ``kserve-provision-location`` mounted at
    /mnt/models, read-only in the predictor (lmops.cluster.kserve_pods);
  - a Service ``<revision>`` (port 80 to the container's port): the revision's own URL, KServe's tag URL;
- traffic as KServe splits it, behind the InferenceService's one URL (lmops.cluster.kserve_router, playing
  Knative's route): with ``canaryTrafficPercent`` the latest revision takes that share and the last
  rolled-out one the rest; without it the latest takes all of it once ready and becomes the rolled-out
  revision. ``canaryTrafficPercent: 0`` is KServe's rollback: all traffic on the rolled-out revision at
  once, no new revision. A revision is listed in the traffic only once it is ready (a pod Ready and its
  Service answering the predictor's readiness path: Knative probes a route before it calls it Ready), and
  a revision no traffic can reach (superseded, rolled back, replaced by a roll-out) is stopped: its
  Deployment and Service are deleted (Knative scales it to zero);
- the status KServe writes, from the pods: ``url`` / ``address.url`` (the router), ``components.predictor``
  (``url``, ``latestCreatedRevision``, ``latestReadyRevision``, ``latestRolledoutRevision``,
  ``previousRolledoutRevision``, ``traffic`` with each revision's tag URL), ``modelStatus``, and the
  ``PredictorReady`` / ``Ready`` conditions: they follow the revision the spec sends traffic to -- False
  with reason RevisionFailed and the pod's reason (an init container or predictor that exits, OOMKilled,
  a missing image or Secret) when it cannot start;
- deleting the InferenceService deletes its revisions (they are owned by it as well).

What it does not: Knative's queue-proxy, activator and autoscaler (replicas are minReplicas, at least 1),
Istio, host-based tag routing (each revision's tag URL is its Service's address), ServingRuntimes
(``modelFormat`` predictors fail with a reason: only custom containers are served), transformers,
explainers and the raw-deployment mode.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from lmops import kube
from lmops.cluster import kserve_pods, node_network, supervise
from lmops.cluster.kserve_router import Router
from lmops.cluster.standin import StandIn, main, now
from lmops.processes import port_answers


@dataclass
class _Revision:
    name: str
    digest: str
    service_url: str | None = None  # the revision's Service: its tag URL, the router's backend
    ready: bool = False
    failed: str = ""  # why its pod cannot serve (RevisionFailed), else ""
    waiting: str = ""  # why it is not ready yet (Pending, Unschedulable, ...)
    stopped: bool = False  # no traffic can reach it: its Deployment and Service are deleted


@dataclass
class _Service:
    uid: str
    obj: dict[str, Any]
    router: Router
    revisions: dict[str, _Revision] = field(default_factory=dict)
    count: int = 0
    rolled_out: str | None = None  # the revision that last took all the traffic
    previous: str | None = None
    published: str = ""  # the last status written, to write only changes


class KServeStandIn(StandIn):
    """KServe stand-in: each InferenceService revision a Deployment and a Service of the rendered predictor."""

    api_version, kind = "serving.kserve.io/v1beta1", "InferenceService"

    def __init__(self, *args, router_host: str = node_network.NODE_IP, **kwargs):
        super().__init__(*args, **kwargs)
        self.router_host = router_host
        self.services: dict[tuple[str, str], _Service] = {}

    # -------------------------------------------------------- events
    def changed(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        key = (meta["namespace"], meta["name"])
        svc = self.services.get(key)
        if svc is not None and svc.uid != meta["uid"]:
            self._drop(key)
            svc = None
        if meta.get("deletionTimestamp"):
            return
        if svc is None:
            svc = self.services[key] = _Service(meta["uid"], obj, self._router(key))
            # revisions of an earlier run of the stand-in: gone (ours would be new numbers anyway)
            svc.count = self._remove_leftovers(key)
        svc.obj = obj
        predictor = dict(obj["spec"].get("predictor") or {})
        predictor.pop("canaryTrafficPercent", None)  # traffic only: no new revision
        digest = hashlib.sha256(json.dumps(predictor, sort_keys=True).encode()).hexdigest()[:12]
        latest = self._latest(svc)
        if latest is None or latest.digest != digest:
            self._new_revision(key, svc, obj, digest)
        self._reconcile(key, svc)

    def deleted(self, obj: dict[str, Any]) -> None:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        if key in self.services:
            self.log(f"InferenceService {key[0]}/{key[1]}: deleted; deleting its revisions")
            self._drop(key)

    def tick(self) -> None:
        by_ns: dict[str, list[dict[str, Any]]] = {}
        for key, svc in list(self.services.items()):
            ns = key[0]
            if ns not in by_ns:
                by_ns[ns] = kube.list_objects("v1", "Pod", ns, client=self.client)[0]
            for rev in svc.revisions.values():
                self._observe(ns, rev, [p for p in by_ns[ns] if kserve_pods.revision_of(p) == rev.name])
            self._reconcile(key, svc)

    def shutdown(self) -> None:
        for svc in self.services.values():
            svc.router.close()  # the revisions stay: pods outlive their controller, as on a real cluster

    # -------------------------------------------------------- revisions
    def _new_revision(self, key: tuple[str, str], svc: _Service, isvc: dict[str, Any], digest: str) -> None:
        svc.count += 1
        rev = _Revision(f"{key[1]}-predictor-{svc.count:05d}", digest)
        svc.revisions[rev.name] = rev
        self._start_revision(key, rev, isvc)

    def _start_revision(self, key: tuple[str, str], rev: _Revision, isvc: dict[str, Any]) -> None:
        """Its Deployment and Service (again, for a revision traffic returns to: Knative's scale from zero)."""
        try:
            deployment, service = kserve_pods.revision_objects(isvc, rev.name, rev.digest, self._storage_env(isvc))
        except kserve_pods.Unservable as e:
            rev.failed = str(e)
            return
        rev.stopped = False
        kube.apply(deployment, client=self.client)
        applied = kube.apply(service, client=self.client)
        rev.service_url = f"http://{applied['spec']['clusterIP']}"
        self.log(f"InferenceService {key[0]}/{key[1]}: revision {rev.name} started (Deployment "
                 f"{deployment['metadata']['name']}, Service {rev.service_url})")

    def _storage_env(self, isvc: dict[str, Any]) -> list[dict[str, Any]]:
        """The S3 credentials KServe finds for the predictor: its ServiceAccount's Secret annotated
        serving.kserve.io/s3-* (none: the initializer uses what the pod's environment gives)."""
        ns = isvc["metadata"]["namespace"]
        name = (isvc["spec"].get("predictor") or {}).get("serviceAccountName") or "default"
        account = kube.get("v1", "ServiceAccount", name, ns, client=self.client) or {}
        for ref in account.get("secrets") or []:
            secret = kube.get("v1", "Secret", ref["name"], ns, client=self.client)
            if secret and any(k.startswith(kserve_pods.S3_ANNOTATION) for k in secret["metadata"].get("annotations") or {}):
                return kserve_pods.s3_credential_env(secret)
        return []

    def _observe(self, ns: str, rev: _Revision, pods: list[dict[str, Any]]) -> None:
        if rev.failed or rev.stopped or rev.service_url is None:
            return
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        ready = [p for p in live if kserve_pods.pod_ready(p)]
        if ready:
            # Ready once its Service answers too, as Knative probes a route before it calls it Ready: kube-proxy
            # programs a new endpoint a moment after the kubelet reports the pod Ready
            rev.ready = rev.ready or _answers(rev.service_url, kserve_pods.readiness_path(ready[0]))
            rev.waiting = "" if rev.ready else f"its Service {rev.service_url} does not answer yet"
            return
        rev.ready = False
        for pod in live:
            failure = kserve_pods.pod_failure(pod, lambda c, previous: self._log_tail(ns, pod, c, previous))
            if failure:
                rev.failed = failure
                self.log(f"revision {ns}/{rev.name} failed: {failure}")
                return
        rev.waiting = next((w for w in (kserve_pods.pod_waiting(p) for p in live) if w), "")

    def _log_tail(self, ns: str, pod: dict[str, Any], container: str, previous: bool) -> str:
        from kubernetes import client as k8s

        try:
            return k8s.CoreV1Api(self.client).read_namespaced_pod_log(
                pod["metadata"]["name"], ns, container=container, previous=previous, tail_lines=8).strip()
        except Exception as e:  # noqa: BLE001 - the reason is still known without the log
            return f"(log unreadable: {type(e).__name__})"

    def _stop_revision(self, ns: str, svc: _Service, name: str) -> None:
        rev = svc.revisions[name]
        rev.stopped, rev.ready = True, False
        if rev.service_url is None:
            return
        kube.delete("apps/v1", "Deployment", f"{name}-deployment", ns, client=self.client)
        kube.delete("v1", "Service", name, ns, client=self.client)
        self.log(f"InferenceService {ns}/{svc.obj['metadata']['name']}: revision {name} stopped (no traffic)")

    def _remove_leftovers(self, key: tuple[str, str]) -> int:
        ns, name = key
        highest = 0
        for kind, api in (("Deployment", "apps/v1"), ("Service", "v1")):
            for obj in kube.list_objects(api, kind, ns, client=self.client)[0]:
                labels = obj["metadata"].get("labels") or {}
                if labels.get(kserve_pods.ISVC_LABEL) == name and labels.get(kserve_pods.REVISION_LABEL):
                    highest = max(highest, int(labels[kserve_pods.REVISION_LABEL].rsplit("-", 1)[1]))
                    kube.delete(api, kind, obj["metadata"]["name"], ns, client=self.client)
        return highest

    def _drop(self, key: tuple[str, str]) -> None:
        svc = self.services.pop(key)
        svc.router.close()
        for name, rev in svc.revisions.items():
            if not rev.stopped:
                self._stop_revision(key[0], svc, name)

    def _router(self, key: tuple[str, str]) -> Router:
        try:
            return Router(self.router_host, f"{key[0]}/{key[1]}")
        except OSError:  # no node (lmops cluster up --no-node): this machine only
            return Router("127.0.0.1", f"{key[0]}/{key[1]}")

    def _latest(self, svc: _Service) -> _Revision | None:
        return svc.revisions[max(svc.revisions)] if svc.revisions else None

    # -------------------------------------------------------- traffic and status
    def _reconcile(self, key: tuple[str, str], svc: _Service) -> None:
        latest = self._latest(svc)
        percent = (svc.obj["spec"].get("predictor") or {}).get("canaryTrafficPercent")
        stable = svc.revisions.get(svc.rolled_out) if svc.rolled_out else None
        if latest.ready and latest is not stable and (percent is None or percent >= 100 or stable is None):
            # roll out: the new revision takes all the traffic
            svc.previous, svc.rolled_out, stable = svc.rolled_out, latest.name, latest
        # the spec sends traffic to the latest revision (not a rollback to the rolled-out one)
        wants_latest = latest is not stable and (percent is None or percent > 0)
        if wants_latest and latest.stopped and not latest.failed:
            self._start_revision(key, latest, svc.obj)
        for name in list(svc.revisions):
            if name == svc.rolled_out or (name == latest.name and wants_latest):
                continue
            if not svc.revisions[name].stopped:
                self._stop_revision(key[0], svc, name)
            if name not in (latest.name, svc.previous):  # the latest stays known: its spec is the current one
                svc.revisions.pop(name)
        routes: list[tuple[_Revision, int, str | None]] = []
        if stable is not None and latest is not stable and wants_latest and latest.ready and percent is not None:
            routes = [(latest, percent, "latest"), (stable, 100 - percent, "prev")]
        elif stable is not None and stable.ready:
            routes = [(stable, 100, "prev" if latest is not stable else None)]
        svc.router.set_routes([(r.service_url, p) for r, p, _ in routes])
        self._publish(svc, latest, stable, wants_latest, routes)

    def _publish(self, svc: _Service, latest: _Revision, stable: _Revision | None, wants_latest: bool,
                 routes: list[tuple[_Revision, int, str | None]]) -> None:
        traffic = []
        for rev, percent, tag in routes:
            entry = {"revisionName": rev.name, "percent": percent, "latestRevision": rev is latest, "url": rev.service_url}
            if tag:
                entry["tag"] = tag
            traffic.append(entry)
        url = svc.router.url if routes else None
        target = latest if wants_latest or stable is None else stable
        if target.failed:
            ready = _condition("False", "RevisionFailed", f'Revision "{target.name}" failed with message: {target.failed}')
        elif not target.ready or not routes:
            why = f": {target.waiting}" if target.waiting else ""
            ready = _condition("Unknown", "RevisionMissing", f'Revision "{target.name}" is not ready yet{why}')
        else:
            ready = _condition("True")
        predictor: dict[str, Any] = {"latestCreatedRevision": latest.name, "traffic": traffic}
        ready_names = [n for n, r in svc.revisions.items() if r.ready and not r.stopped]
        if ready_names:
            predictor["latestReadyRevision"] = max(ready_names)
        if svc.rolled_out:
            predictor["latestRolledoutRevision"] = svc.rolled_out
        if svc.previous:
            predictor["previousRolledoutRevision"] = svc.previous
        if url:
            predictor["url"] = url
        status = {
            "observedGeneration": svc.obj["metadata"].get("generation"),
            "url": url, "address": {"url": url} if url else None,
            "components": {"predictor": predictor},
            "conditions": [{"type": t, **ready} for t in ("PredictorReady", "Ready")],
            "modelStatus": _model_status(latest),
        }
        text = json.dumps(status, sort_keys=True)
        if text != svc.published:
            self.write_status(svc.obj, {**status, "conditions": [{**c, "lastTransitionTime": now()}
                                                                 for c in status["conditions"]]})
            svc.published = text


def _answers(service_url: str, path: str | None) -> bool:
    """Whether a revision's Service takes traffic: its readiness path answers 200 (a TCP connection, without one)."""
    return supervise.http_ok(service_url + path) if path else port_answers(urlsplit(service_url).hostname, 80, 2)


def _condition(status: str, reason: str = "", message: str = "") -> dict[str, str]:
    out = {"status": status}
    if reason:
        out["reason"] = reason
    if message:
        out["message"] = message
    return out


def _model_status(rev: _Revision) -> dict[str, Any]:
    if rev.failed:
        return {"transitionStatus": "BlockedByFailedLoad", "states": {"activeModelState": "FailedToLoad",
                                                                       "targetModelState": "FailedToLoad"},
                "lastFailureInfo": {"reason": "ModelLoadFailed", "message": rev.failed[-1000:]}}
    state = "Loaded" if rev.ready else "Loading"
    return {"transitionStatus": "UpToDate" if rev.ready else "InProgress",
            "states": {"activeModelState": state, "targetModelState": "Loaded"}}


if __name__ == "__main__":
    sys.exit(main(KServeStandIn))
