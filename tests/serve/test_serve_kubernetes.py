"""`deploy --target kubernetes` on the real API server (`lmops cluster`), with the KServe stand-in serving
each InferenceService revision by a local `lmops serve`: Ready and a smoke request through the URL from
the status, a canary revision beside the stable one, a model that does not load, deletion."""

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
    return load_config("micro", ["deploy.target=kubernetes", f"deploy.namespace={ns}", f"deploy.name={name}",
                                "deploy.ready_timeout_s=120", *overrides])


def _predict(url: str, name: str) -> int:
    return requests.post(f"{url}/v1/models/{name}:predict", json={"instances": [{"prompt": "a", "max_new_tokens": 2}]},
                         timeout=30).status_code


def _answers(url: str) -> bool:
    try:
        requests.get(url, timeout=2)
        return True
    except requests.RequestException:
        return False


def test_ready_canary_and_delete(kube_cluster, kube_namespace, tiny_dir, tmp_path):
    ns, client = kube_namespace, kube_cluster.client()
    t0 = time.monotonic()
    ep = deploy(_cfg(ns, "lm"), str(tiny_dir), tmp_path / "v1")
    first_ready_s = time.monotonic() - t0
    assert ep["smoke"]["status"] == 200 and ep["url"].startswith("http://127.0.0.1:")
    status = kube.get(API, KIND, "lm", ns, client=client)["status"]
    predictor = status["components"]["predictor"]
    assert predictor["latestCreatedRevision"] == predictor["latestReadyRevision"] == "lm-predictor-00001"
    assert predictor["traffic"] == [{"revisionName": "lm-predictor-00001", "percent": 100, "latestRevision": True,
                                     "url": ep["url"]}]
    assert status["address"]["url"] == status["url"] == ep["url"]
    assert {c["type"]: c["status"] for c in status["conditions"]} == {"PredictorReady": "True", "Ready": "True"}

    # a new revision as a 25% canary: both revisions serve, the stable one keeps the status URL
    canary = deploy(_cfg(ns, "lm", "deploy.canary_traffic_percent=25", "serve.max_new_tokens=32"), str(tiny_dir),
                    tmp_path / "v2")
    status = kube.get(API, KIND, "lm", ns, client=client)["status"]
    traffic = {t["revisionName"]: t for t in status["components"]["predictor"]["traffic"]}
    assert {n: t["percent"] for n, t in traffic.items()} == {"lm-predictor-00002": 25, "lm-predictor-00001": 75}
    assert canary["url"] == ep["url"]
    for t in traffic.values():
        assert _predict(t["url"], "lm") == 200

    # deleting the InferenceService stops both servers
    assert kube.delete(API, KIND, "lm", ns, client=client)
    deadline = time.monotonic() + 30
    while any(_answers(t["url"]) for t in traffic.values()):
        assert time.monotonic() < deadline, "the servers outlived their InferenceService"
        time.sleep(0.5)
    print(f"apply -> Ready (first revision, tiny model): {first_ready_s:.1f}s")


def test_a_model_that_does_not_load_fails_the_stage_with_the_reason(kube_cluster, kube_namespace, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(DeployError, match=r"(?s)InferenceService .*/bad is not Ready: RevisionFailed: Revision "
                                          r"\"bad-predictor-00001\" failed with message: the model server exited"):
        deploy(_cfg(kube_namespace, "bad"), str(broken), tmp_path / "out")


def test_the_api_server_refuses_an_invalid_inference_service(kube_cluster, kube_namespace):
    from lmops.config import load_config as load
    from lmops.serve.inference_service import render_inference_service

    cfg = load("micro", [f"deploy.namespace={kube_namespace}"])
    m = render_inference_service(cfg.deploy, cfg.serve, "s3://b/model")
    m["spec"]["predictor"]["minReplicas"] = "one"
    with pytest.raises(kube.KubeError, match=r"refused it as invalid: spec.predictor.minReplicas: Invalid value"):
        kube.apply(m, client=kube_cluster.client())
