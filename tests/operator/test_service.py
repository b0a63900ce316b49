"""The owned InferenceService: rendered from the desired service (valid against KServe's CRD schema), read back
from the status KServe (here: its stand-in's shape) writes."""

from __future__ import annotations

import pytest

from lmops.config import ImageConfig
from lmops.crd import parse_deployment
from lmops.operator.service import observe, render
from lmops.rollout import DesiredService
from rendered_checks import assert_valid

MD = {"metadata": {"name": "demo", "namespace": "ns", "uid": "0123456789ab"}}


def spec(**serving):
    return parse_deployment({"model": {"name": "lm"}, "serving": serving})


@pytest.mark.parametrize("desired,percent", [(DesiredService("1"), None), (DesiredService("1", "2", 10), 10),
                                             (DesiredService("1", "2", None), None)])
def test_render(desired, percent):
    isvc = render(MD, spec(tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]), desired,
                  "http://mlflow:5000")
    pred = isvc["spec"]["predictor"]
    assert_valid(isvc)  # KServe's full CRD schema, Kubernetes 1.30+, restricted pods
    assert pred.get("canaryTrafficPercent") == percent
    assert f"models:/lm/{desired.serving}" in pred["containers"][0]["args"]
    assert {"name": "MLFLOW_TRACKING_URI", "value": "http://mlflow:5000"} in pred["containers"][0]["env"]
    owner = isvc["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("ModelDeployment", "0123456789ab", True)
    assert isvc["metadata"]["annotations"]["serving.kserve.io/enable-tag-routing"] == "true"
    assert pred["tolerations"] == [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert observe(isvc).applied == desired


def test_image_is_the_operators_image_setting_unless_the_resource_names_one():
    image = ImageConfig(repository="registry.local/ml/lmops", tag="v2")
    cpu = render(MD, spec(), DesiredService("1"), None, image)["spec"]["predictor"]
    gpu = render(MD, spec(gpus=1), DesiredService("1"), None, image)["spec"]["predictor"]
    own = render(MD, spec(image="registry.local/own:1"), DesiredService("1"), None, image)["spec"]["predictor"]
    assert cpu["containers"][0]["image"] == "registry.local/ml/lmops:v2-cpu" and "tolerations" not in cpu
    assert gpu["containers"][0]["image"] == "registry.local/ml/lmops:v2-cuda"
    assert gpu["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert own["containers"][0]["image"] == "registry.local/own:1"


def with_status(isvc, generation=1, **predictor):
    isvc["metadata"]["generation"] = generation
    ready = predictor.pop("ready", {"status": "True"})
    isvc["status"] = {"observedGeneration": 1, "url": predictor.pop("url", None),
                      "components": {"predictor": predictor}, "conditions": [{"type": "Ready", **ready}]}
    return isvc


def test_observe_canary_with_tag_urls():
    isvc = with_status(render(MD, spec(), DesiredService("1", "2", 10), None), latestCreatedRevision="demo-predictor-00002",
                       latestReadyRevision="demo-predictor-00002", url="http://127.0.0.1:1",
                       traffic=[{"revisionName": "demo-predictor-00002", "percent": 10, "tag": "latest",
                                 "latestRevision": True, "url": "http://127.0.0.1:2"},
                                {"revisionName": "demo-predictor-00001", "percent": 90, "tag": "prev",
                                 "latestRevision": False, "url": "http://127.0.0.1:1"}])
    s = observe(isvc)
    assert s.current and s.latest_ready and s.latest_failed is None
    assert (s.canary_url, s.stable_url) == ("http://127.0.0.1:2", "http://127.0.0.1:1")


def test_observe_failed_and_stale():
    isvc = with_status(render(MD, spec(), DesiredService("1", "2", 10), None), latestCreatedRevision="r2",
                       latestReadyRevision="r1",
                       ready={"status": "False", "reason": "RevisionFailed", "message": 'Revision "r2" failed: OOM'})
    s = observe(isvc)
    assert not s.latest_ready and "OOM" in s.latest_failed
    assert not observe(with_status(render(MD, spec(), DesiredService("1"), None), generation=2)).current
    assert observe(None) is None


def test_operator_image_setting_from_the_charts_environment(monkeypatch):
    from lmops.errors import LmopsError
    from lmops.operator.run import image_from_env

    for var in ("LMOPS_IMAGE_REPOSITORY", "LMOPS_IMAGE_TAG", "LMOPS_IMAGE_PULL_POLICY"):
        monkeypatch.delenv(var, raising=False)
    assert image_from_env() == ImageConfig()
    monkeypatch.setenv("LMOPS_IMAGE_REPOSITORY", "registry.local/ml/lmops")
    monkeypatch.setenv("LMOPS_IMAGE_TAG", "v3")
    assert image_from_env().ref("cuda") == "registry.local/ml/lmops:v3-cuda"
    monkeypatch.setenv("LMOPS_IMAGE_REPOSITORY", "Not A Repo")
    with pytest.raises(LmopsError, match=r"(?s)\$LMOPS_IMAGE_\*: .*repository"):
        image_from_env()


def test_api_key_secret_setting_reaches_the_predictor_and_the_probes(monkeypatch):
    import argparse

    from lmops.operator.run import settings_from

    pred = render(MD, spec(), DesiredService("1"), None, None, "lmops-api-keys")["spec"]["predictor"]
    assert {"name": "LMOPS_API_KEYS", "valueFrom": {"secretKeyRef": {"name": "lmops-api-keys", "key": "api-keys"}}} \
        in pred["containers"][0]["env"]
    monkeypatch.setenv("LMOPS_SERVING_API_KEY_SECRET", "lmops-api-keys")
    monkeypatch.setenv("LMOPS_API_KEYS", "sk-first,sk-second")
    args = argparse.Namespace(webhook_port=None, tracking_uri=None, poll_seconds=10, runs_dir="/tmp/runs",
                              webhook_host="127.0.0.1", namespace=None)
    s = settings_from(args)
    assert (s.api_key_secret, s.probe_api_key) == ("lmops-api-keys", "sk-first")
