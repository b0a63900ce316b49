"""The operator in its pod, as a user runs it: `helm install` of the chart helm/lmops into one namespace (tests,
bench), with the chart's ServiceAccount, Role and Deployment, the lmops image from the node's containerd, and
MLflow at an address pods reach (lmops.cluster.pod_relay for a local server).

``kill()`` deletes the operator's pod with grace 0 -- its container is killed at once, no shutdown, as a node
failure would -- and the Deployment's ReplicaSet starts a new pod, which must converge from what the API server
and MLflow hold. The killed pods' logs are kept (``text()``), since a deleted pod's log is gone with it.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field

from lmops import kube
from lmops.config import REPO_ROOT

CHART = REPO_ROOT / "helm" / "lmops"
# a container in one of these states will not run the operator without a change to the release
STUCK = ("CrashLoopBackOff", "ErrImageNeverPull", "ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError")


def image_values(ref: str) -> dict:
    """The chart's ``image`` values for an lmops cpu image reference (``<repository>:<tag>-cpu``)."""
    repository, _, tag = ref.rpartition(":")
    if not repository or not tag.endswith("-cpu"):
        raise ValueError(f"image {ref!r}: expected <repository>:<tag>-cpu (the chart runs the operator's cpu variant)")
    return {"repository": repository, "tag": tag.removesuffix("-cpu")}


@dataclass
class OperatorPod:
    """One installed release of the chart: the operator's Deployment ``<release>-operator`` in ``namespace``."""

    client: object  # the admin's API client
    kubeconfig: str
    namespace: str
    release: str
    webhook_url: str | None = None
    _past_logs: list[str] = field(default_factory=list)
    killed: list[str] = field(default_factory=list)

    def pods(self, *, terminating: bool = False) -> list[dict]:
        """The release's operator pods; ``terminating``: also those being deleted (their operator may still run)."""
        pods, _ = kube.list_objects("v1", "Pod", self.namespace, client=self.client, label_selector=
                                    f"app.kubernetes.io/name=lmops-operator,app.kubernetes.io/instance={self.release}")
        return [p for p in pods if terminating or not p["metadata"].get("deletionTimestamp")]

    def pod(self) -> dict | None:
        pods = self.pods()
        return pods[0] if pods else None

    def wait_running(self, timeout_s: float = 180) -> dict:
        """The operator's container running (Ready follows at the chart's next readiness probe, up to 10 s later,
        which only the webhook Service waits for); RuntimeError with the pod's reason if it cannot start."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            pod = self.pod()
            if pod and any((cs.get("state") or {}).get("running") for cs in pod["status"].get("containerStatuses") or []):
                return pod
            if failure := self.failure():
                raise RuntimeError(f"the operator pod cannot run: {failure}\n{self.text()[-3000:]}")
            time.sleep(0.5)
        raise RuntimeError(f"the operator pod was not running after {timeout_s:.0f}s: "
                           f"{(self.pod() or {}).get('status')}\n{self.text()[-3000:]}")

    def failure(self) -> str | None:
        """Why the operator pod does not run, or None: a container that restarted (the operator died in it:
        only kill() may stop it) or is stuck waiting."""
        for pod in self.pods():
            for cs in pod["status"].get("containerStatuses") or []:
                waiting = (cs.get("state") or {}).get("waiting") or {}
                if waiting.get("reason") in STUCK:
                    return f"pod {pod['metadata']['name']}: {waiting['reason']}: {waiting.get('message', '')}"
                if cs.get("restartCount"):
                    last = (cs.get("lastState") or {}).get("terminated") or {}
                    return (f"pod {pod['metadata']['name']}: the operator exited ({last.get('reason')}, "
                            f"exit code {last.get('exitCode')}) and was restarted")
        return None

    def _log(self, name: str) -> str:
        from kubernetes import client as k8s
        from kubernetes.client.exceptions import ApiException

        try:
            return k8s.CoreV1Api(self.client).read_namespaced_pod_log(name, self.namespace, container="operator")
        except ApiException as e:  # not started yet, or gone
            return f"(no log of pod {name}: {e.reason})\n"

    def text(self) -> str:
        """The operator's log: every pod's of this release, the killed ones' first."""
        return "".join(self._past_logs) + "".join(
            f"--- pod {p['metadata']['name']}\n{self._log(p['metadata']['name'])}" for p in self.pods())

    def kill(self) -> str:
        """Delete the operator's pod with grace 0 (its container killed, no shutdown); returns the pod's name. The
        Deployment starts another."""
        pod = self.pod()
        if pod is None:
            raise RuntimeError(f"no operator pod of release {self.release} in {self.namespace} to kill")
        name = pod["metadata"]["name"]
        self._past_logs.append(f"--- pod {name} (killed)\n{self._log(name)}")
        kube.delete("v1", "Pod", name, self.namespace, client=self.client, grace_period_s=0)
        self.killed.append(name)
        return name

    def stop(self, timeout_s: float = 120, *, uninstall: bool = True) -> None:
        """``helm uninstall`` (the chart's objects go, then its post-delete hook releases the operator's
        finalizers) and the operator's pods waited for. ``uninstall=False``: only the operator's Deployment is
        deleted and its pods waited for (a test's namespace, deleted next, takes the rest)."""
        if uninstall:
            _helm(self.kubeconfig, self.namespace).uninstall(self.release, wait="watcher", timeout=int(timeout_s),
                                                              ignore_not_found=True)
        else:
            kube.delete("apps/v1", "Deployment", f"{self.release}-operator", self.namespace, client=self.client)
        deadline = time.monotonic() + timeout_s
        while self.pods(terminating=True):  # gone, not just deleted: a terminating pod's operator still acts
            if time.monotonic() > deadline:
                raise RuntimeError(f"the operator pods of release {self.release} in {self.namespace} were still there"
                                   f" {timeout_s:.0f}s after it was stopped")
            time.sleep(0.5)


def _helm(kubeconfig: str, namespace: str):
    import helm_python as helm  # the Helm SDK (dev dependency): only the demo, tests and bench install the chart

    return helm.Config(kubeconfig_path=str(kubeconfig), namespace=namespace)


def install_operator(cluster, namespace: str, tracking_uri: str, image: str, *, poll_s: float = 2.0,
                     webhook_secret: str | None = None, release: str = "lmops", timeout_s: float = 240,
                     values: dict | None = None) -> OperatorPod:
    """`helm install` of the chart's operator into ``namespace`` and wait for its container to run.
    ``tracking_uri``: MLflow as pods reach it. ``webhook_secret``: registry webhooks on, with this HMAC secret (a
    Secret ``<release>-webhook`` made here; the chart never holds secrets); MLflow posts them to
    ``webhook_url``, the operator's webhook Service. ``values``: more chart values, merged over these."""
    client = cluster.client()
    webhook = {"enabled": webhook_secret is not None}
    if webhook_secret is not None:
        webhook["secretName"] = f"{release}-webhook"
        kube.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": webhook["secretName"], "namespace": namespace},
                    "data": {"secret": base64.b64encode(webhook_secret.encode()).decode()}}, client=client)
    chart_values = _merge({"image": image_values(image), "operator": {"pollSeconds": poll_s},
                           "mlflow": {"trackingUri": tracking_uri}, "webhook": webhook}, values or {})
    _helm(cluster.kubeconfig, namespace).install(str(CHART), release, chart_values, namespace=namespace,
                                                 timeout=int(timeout_s))
    op = OperatorPod(client, cluster.kubeconfig, namespace, release)
    op.wait_running(timeout_s)
    if webhook_secret is not None:
        svc = kube.get("v1", "Service", f"{release}-operator-webhook", namespace, client=client)
        op.webhook_url = f"http://{svc['spec']['clusterIP']}/mlflow/webhook"  # kube-proxy: this machine reaches it
    return op


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out

