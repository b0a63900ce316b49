"""`deploy --target kubernetes` on the real API server (`lmops cluster`), with the KServe stand-in making each
InferenceService revision's pods from the lmops image (the model from S3 through KServe's storage initializer):
Ready and a smoke request through the URL from the status, a canary revision beside the stable one, a model that
does not load, deletion."""

from __future__ import annotations

import time

import pytest
import requests

from lmops import kube
from lmops.config import load_config
from lmops.serve.deploy import DeployError, deploy

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
API, KIND = "serving.kserve.io/v1beta1", "InferenceService"


def _cfg(ns: str, name: str, *overrides: str):
    # two predictors fit the 2-core node side by side (the default asks a whole core each)
    return load_config("micro", ["deploy.target=kubernetes", f"deploy.namespace={ns}", f"deploy.name={name}",
                                "deploy.ready_timeout_s=240", "deploy.resources.cpu=500m", *overrides])


@pytest.fixture
def model_in_s3(s3, tiny_dir) -> str:
    from lmops import storage

    _, bucket = s3
    storage.upload_dir(tiny_dir, f"s3://{bucket}/tiny")
    return f"s3://{bucket}/tiny"


def _pods(client, ns: str) -> list[dict]:
    return [p for p in kube.list_objects("v1", "Pod", ns, client=client)[0] if not p["metadata"].get("deletionTimestamp")]


def _predict(url: str, name: str) -> int:
    return requests.post(f"{url}/v1/models/{name}:predict", json={"instances": [{"prompt": "a", "max_new_tokens": 2}]},
                         timeout=30).status_code


def test_ready_canary_and_delete(kube_cluster, kube_namespace, node_image, kserve_s3_account, model_in_s3, tmp_path):
    ns, client = kube_namespace, kube_cluster.client()
    s3 = [f"deploy.storage_uri={model_in_s3}", f"deploy.service_account={kserve_s3_account}"]
    t0 = time.monotonic()
    ep = deploy(_cfg(ns, "lm", *s3), model_in_s3, tmp_path / "v1")
    first_ready_s = time.monotonic() - t0
    assert ep["smoke"]["status"] == 200 and ep["url"].startswith("http://10.244.0.1:")
    status = kube.get(API, KIND, "lm", ns, client=client)["status"]
    predictor = status["components"]["predictor"]
    assert predictor["latestCreatedRevision"] == predictor["latestReadyRevision"] == "lm-predictor-00001"
    [route] = predictor["traffic"]
    assert route["revisionName"] == "lm-predictor-00001" and route["percent"] == 100 and route["latestRevision"]
    assert status["address"]["url"] == status["url"] == ep["url"]
    # the revision is a pod of the lmops image: the predictor container as rendered, the storage initializer
    [pod] = _pods(client, ns)
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["storage-initializer"]
    assert pod["spec"]["containers"][0]["image"] == node_image and pod["spec"]["serviceAccountName"] == "kserve-s3"
    assert {c["type"]: c["status"] for c in status["conditions"]} == {"PredictorReady": "True", "Ready": "True"}

    # a new revision as a 25% canary: both revisions serve, the stable one keeps the status URL
    canary = deploy(_cfg(ns, "lm", *s3, "deploy.canary_traffic_percent=25", "serve.max_new_tokens=32"), model_in_s3,
                    tmp_path / "v2")
    status = kube.get(API, KIND, "lm", ns, client=client)["status"]
    traffic = {t["revisionName"]: t for t in status["components"]["predictor"]["traffic"]}
    assert {n: t["percent"] for n, t in traffic.items()} == {"lm-predictor-00002": 25, "lm-predictor-00001": 75}
    assert canary["url"] == ep["url"]
    for t in traffic.values():
        assert _predict(t["url"], "lm") == 200

    # deleting the InferenceService deletes both revisions' pods
    assert kube.delete(API, KIND, "lm", ns, client=client)
    deadline = time.monotonic() + 90
    while _pods(client, ns):
        assert time.monotonic() < deadline, "the predictor pods outlived their InferenceService"
        time.sleep(0.5)
    print(f"apply -> Ready (first revision, tiny model): {first_ready_s:.1f}s")


def test_a_model_that_does_not_load_fails_the_stage_with_the_reason(kube_cluster, kube_namespace, node_image,
                                                                    kserve_s3_account, s3, tmp_path):
    from lmops import storage

    _, bucket = s3
    storage.write_bytes(f"s3://{bucket}/broken/config.json", b"{not json")
    uri = f"s3://{bucket}/broken"
    with pytest.raises(DeployError, match=r"(?s)InferenceService .*/bad is not Ready: RevisionFailed: Revision "
                                          r"\"bad-predictor-00001\" failed with message: container kserve-container "
                                          r"terminated: Error \(exit code 1\); last log lines:\n.*config"):
        deploy(_cfg(kube_namespace, "bad", f"deploy.storage_uri={uri}", f"deploy.service_account={kserve_s3_account}"),
               uri, tmp_path / "out")


def test_the_api_server_refuses_an_invalid_inference_service(kube_cluster, kube_namespace):
    from lmops.config import load_config as load
    from lmops.serve.inference_service import render_inference_service

    cfg = load("micro", [f"deploy.namespace={kube_namespace}"])
    m = render_inference_service(cfg.deploy, cfg.serve, "s3://b/model")
    m["spec"]["predictor"]["minReplicas"] = "one"
    with pytest.raises(kube.KubeError, match=r"refused it as invalid: spec.predictor.minReplicas: Invalid value"):
        kube.apply(m, client=kube_cluster.client())
