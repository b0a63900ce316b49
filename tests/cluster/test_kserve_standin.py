"""The KServe stand-in on `lmops cluster`'s node: each InferenceService revision a Deployment and a Service shaped
as KServe / Knative make them (the predictor container as lmops renders it, KServe's storage-initializer init
container fetching the model from S3 into /mnt/models), pods of the lmops image, the canary split over real HTTP
behind the one URL, RevisionFailed with the pod's own reason, and KServe's rollback (canaryTrafficPercent 0)
stopping every revision no traffic reaches: after three quick bad promotions only the stable revision's pod is
alive, and it is the same pod (no new revision of a version that already serves)."""

from __future__ import annotations

import os
import signal
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from lmops import kube, storage
from lmops.cluster import kserve_pods, node, supervise
from lmops.config import DeployConfig, ServeConfig
from lmops.observe import read_metrics
from lmops.pipeline import servers
from lmops.serve.inference_service import render_inference_service

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
ISVC = ("serving.kserve.io/v1beta1", "InferenceService")


def _isvc(ns: str, uri: str, account: str, percent: int | None = None, max_new_tokens: int = 64) -> dict:
    cfg = DeployConfig(name="lm", namespace=ns, storage_uri=uri, service_account=account,
                       canary_traffic_percent=percent, resources={"cpu": "500m", "memory": "2Gi"})
    return render_inference_service(cfg, ServeConfig(max_new_tokens=max_new_tokens), uri)


def _status(client, ns: str) -> dict:
    return (kube.get(*ISVC, "lm", ns, client=client) or {}).get("status") or {}


def _ready(st: dict) -> dict:
    return next((c for c in st.get("conditions") or [] if c["type"] == "Ready"), {})


def _serving(st: dict) -> dict | None:
    """The status once Ready; a RevisionFailed fails the test at once, with the pod's reason."""
    ready = _ready(st)
    assert ready.get("reason") != "RevisionFailed", ready.get("message")
    return st if ready.get("status") == "True" else None


def _wait(what: str, fn, timeout: float, describe=lambda: None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; state: {describe()}")


def _within(rendered, got) -> bool:
    """``got`` (read back from the API server, which adds defaults) has everything ``rendered`` says."""
    if isinstance(rendered, dict):
        return isinstance(got, dict) and all(_within(v, got.get(k)) for k, v in rendered.items())
    if isinstance(rendered, list):
        return isinstance(got, list) and len(got) == len(rendered) and all(map(_within, rendered, got))
    return rendered == got


def _alive(client, ns: str) -> list[dict]:
    return [p for p in kube.list_objects("v1", "Pod", ns, client=client)[0] if not p["metadata"].get("deletionTimestamp")]


@contextmanager
def _kube_proxy_stopped(cluster):
    """kube-proxy stopped (SIGSTOP): it programs no new Service or endpoint until it continues."""
    pid = servers.read_record(node.KUBE_PROXY, supervise.procs(Path(cluster.folder)))["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def test_revisions_as_pods_split_failure_and_rollback(kube_cluster, kube_namespace, node_image, kserve_s3_account, s3,
                                                      tiny_model_dir):
    client, ns = kube_cluster.client(), kube_namespace
    _, bucket = s3
    uri = f"s3://{bucket}/tiny"
    storage.upload_dir(tiny_model_dir, uri)
    t0 = time.monotonic()
    v1 = _isvc(ns, uri, kserve_s3_account)
    kube.apply(v1, client=client)
    st = _wait("revision 1 Ready", lambda: _serving(_status(client, ns)),
               240, lambda: (_status(client, ns), [p.get("status") for p in _alive(client, ns)]))
    first_ready_s = time.monotonic() - t0

    # KServe's shapes: a Deployment and a Service per revision, owned by the InferenceService
    rev1 = "lm-predictor-00001"
    dep = kube.get("apps/v1", "Deployment", f"{rev1}-deployment", ns, client=client)
    svc = kube.get("v1", "Service", rev1, ns, client=client)
    owner = dep["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("InferenceService", "lm", True)
    pod = dep["spec"]["template"]["spec"]
    rendered = v1["spec"]["predictor"]["containers"][0]
    [main] = pod["containers"]
    for key in ("image", "command", "args", "env", "resources", "readinessProbe", "securityContext", "ports"):
        assert _within(rendered[key], main[key]), (key, rendered[key], main[key])
    assert {"name": "kserve-provision-location", "mountPath": "/mnt/models", "readOnly": True} in main["volumeMounts"]
    [init] = pod["initContainers"]
    assert init["name"] == "storage-initializer" and init["args"] == [uri, "/mnt/models"]
    assert init["image"] == node_image and init["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert {e["name"] for e in init["env"]} >= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"}
    assert {"name": "kserve-provision-location", "emptyDir": {}} in pod["volumes"]
    assert pod["serviceAccountName"] == kserve_s3_account
    assert _within(v1["spec"]["predictor"]["securityContext"], pod["securityContext"])
    assert [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [(80, 8080)]
    [p1] = _alive(client, ns)
    assert p1["metadata"]["labels"]["serving.knative.dev/revision"] == rev1
    assert st["url"].startswith("http://10.244.0.1:") and st["components"]["predictor"]["latestRolledoutRevision"] == rev1

    # a 25% canary: listed once ready, then exactly a quarter of the requests through the one URL reach it.
    # Ready means its Service answers, not only its pod: while kube-proxy has not programmed the new Service
    # (stopped here), the canary stays out of the traffic and the InferenceService says why
    rev2 = "lm-predictor-00002"
    with _kube_proxy_stopped(kube_cluster):
        kube.apply(_isvc(ns, uri, kserve_s3_account, percent=25, max_new_tokens=48), client=client)
        _wait("the canary's pod Ready", lambda: [p for p in _alive(client, ns)
                                                 if kserve_pods.revision_of(p) == rev2 and kserve_pods.pod_ready(p)],
              240, lambda: [p.get("status") for p in _alive(client, ns)])
        st = _wait("the canary named as not answering", lambda: (lambda s: s if "does not answer yet" in
                                                                 _ready(s).get("message", "") else None)(_status(client, ns)),
                   30, lambda: _status(client, ns))
        assert _ready(st)["status"] == "Unknown" and f'Revision "{rev2}" is not ready yet' in _ready(st)["message"]
        assert [t["revisionName"] for t in st["components"]["predictor"]["traffic"]] == [rev1]
    st = _wait("canary in the traffic", lambda: (lambda s: s if s and len(s["components"]["predictor"]["traffic"]) == 2
                                                 else None)(_serving(_status(client, ns))), 240, lambda: _status(client, ns))
    traffic = {t["revisionName"]: t for t in st["components"]["predictor"]["traffic"]}
    assert {n: t["percent"] for n, t in traffic.items()} == {rev2: 25, rev1: 75}
    assert traffic[rev2]["tag"] == "latest" and traffic[rev1]["tag"] == "prev"
    for _ in range(40):
        r = requests.post(f"{st['url']}/v1/models/lm:predict", json={"instances": [{"prompt": "a", "max_new_tokens": 1}]},
                          timeout=60)
        assert r.status_code == 200, r.text
    counts = {n: read_metrics(t["url"]).requests for n, t in traffic.items()}
    assert counts == {rev2: 10, rev1: 30}, counts

    # KServe's rollback: canaryTrafficPercent 0 -- all traffic on revision 1 at once, the canary's pod stopped
    kube.apply(_isvc(ns, uri, kserve_s3_account, percent=0, max_new_tokens=48), client=client)
    _wait("canary stopped", lambda: [p["metadata"]["name"] for p in _alive(client, ns)] == [p1["metadata"]["name"]], 120,
          lambda: [p["metadata"]["name"] for p in _alive(client, ns)])
    st = _status(client, ns)
    assert [(t["revisionName"], t["percent"]) for t in st["components"]["predictor"]["traffic"]] == [(rev1, 100)]
    assert _ready(st)["status"] == "True"

    # a version whose model is missing: RevisionFailed with the storage initializer's own words
    kube.apply(_isvc(ns, f"s3://{bucket}/missing-1", kserve_s3_account, percent=20), client=client)
    st = _wait("RevisionFailed", lambda: (lambda s: s if _ready(s).get("reason") == "RevisionFailed" else None)(
        _status(client, ns)), 180, lambda: _status(client, ns))
    message = _ready(st)["message"]
    assert message.startswith('Revision "lm-predictor-00003" failed with message: init container storage-initializer'
                              " terminated: Error (exit code 1)"), message
    assert f"s3://{bucket}/missing-1" in message, message
    assert [(t["revisionName"], t["percent"]) for t in st["components"]["predictor"]["traffic"]] == [(rev1, 100)]

    # three quick bad promotions, each superseded or rolled back before it could start: only stable's pod is alive
    for i in (2, 3, 4):
        kube.apply(_isvc(ns, f"s3://{bucket}/missing-{i}", kserve_s3_account, percent=20), client=client)
        time.sleep(0.5)
        kube.apply(_isvc(ns, f"s3://{bucket}/missing-{i}", kserve_s3_account, percent=0), client=client)
    _wait("only the stable revision's pod", lambda: [p["metadata"]["name"] for p in _alive(client, ns)] == [p1["metadata"]["name"]],
          120, lambda: [(p["metadata"]["name"], p["metadata"]["labels"]) for p in _alive(client, ns)])
    deployments = [d["metadata"]["name"] for d in kube.list_objects("apps/v1", "Deployment", ns, client=client)[0]]
    assert deployments == [f"{rev1}-deployment"], deployments
    st = _wait("settled", lambda: (lambda s: s if _ready(s).get("status") == "True" else None)(_status(client, ns)), 30,
               lambda: _status(client, ns))
    pred = st["components"]["predictor"]
    assert pred["latestCreatedRevision"] == "lm-predictor-00006" and pred["latestRolledoutRevision"] == rev1
    assert requests.post(f"{st['url']}/v1/models/lm:predict", json={"instances": [{"prompt": "a", "max_new_tokens": 1}]},
                         timeout=60).status_code == 200
    print(f"\nInferenceService apply -> Ready (first revision as a pod, model from S3): {first_ready_s:.1f}s")
