"""Rendered InferenceServices: valid against KServe's full CRD schema (strict, list-map keys), each predictor pod
valid for Kubernetes 1.30+ and compliant with the restricted Pod Security Standard (tests/rendered_checks.py)."""

from __future__ import annotations

import copy

import pytest
import yaml

from lmops.cluster import crd_schema
from lmops.config import ConfigError, DeployConfig, ImageConfig, ServeConfig, config_from_dict
from lmops.errors import LmopsError
from lmops.serve.inference_service import render_inference_service
from rendered_checks import assert_valid, rendered_problems

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def test_lmops_predictor_with_gpu_canary_and_service_account():
    cfg = DeployConfig(service_account="s3-reader", canary_traffic_percent=10,
                       resources={"cpu": "4", "memory": "16Gi", "gpus": 1}, env={"LOG_LEVEL": "info"},
                       node_selector={"cloud.google.com/gke-accelerator": "nvidia-l4"})
    image = ImageConfig(repository="registry.local/ml/lmops", tag="1.2", pull_policy="Always")
    m = render_inference_service(cfg, ServeConfig(), "s3://models/run-7/checkpoint", image=image)
    assert_valid(m)
    pred = m["spec"]["predictor"]
    assert pred["canaryTrafficPercent"] == 10 and pred["serviceAccountName"] == "s3-reader"
    (c,) = pred["containers"]
    assert c["image"] == "registry.local/ml/lmops:1.2-cuda" and c["imagePullPolicy"] == "Always"
    assert {"name": "STORAGE_URI", "value": "s3://models/run-7/checkpoint"} in c["env"]
    assert c["args"][:3] == ["serve", "--model", "/mnt/models"] and "0.0.0.0" in c["args"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1 == c["resources"]["requests"]["nvidia.com/gpu"]
    # a GPU predictor lands on GPU nodes: the tainted pool's toleration by default, and the node selector
    assert pred["tolerations"] == [GPU_TOLERATION]
    assert pred["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}


def test_cpu_predictor_gets_the_cpu_image_and_no_gpu_scheduling():
    m = render_inference_service(DeployConfig(), ServeConfig(), "models:/tiny@champion")
    assert_valid(m)
    pred = m["spec"]["predictor"]
    assert pred["containers"][0]["image"] == ImageConfig().ref("cpu") == "localhost/lmops:" + ImageConfig().tag + "-cpu"
    assert "tolerations" not in pred and "nodeSelector" not in pred
    # an explicit image and tolerations win; an empty list means none
    own = DeployConfig(image="registry.local/other:7", resources={"gpus": 2}, tolerations=[])
    pred = render_inference_service(own, ServeConfig(), "models:/tiny@champion")["spec"]["predictor"]
    assert pred["containers"][0]["image"] == "registry.local/other:7" and "tolerations" not in pred


def test_predictor_runs_restricted_with_writable_emptydirs():
    pred = render_inference_service(DeployConfig(), ServeConfig(), "models:/tiny@champion")["spec"]["predictor"]
    assert pred["securityContext"]["runAsUser"] == 1000 and pred["securityContext"]["runAsNonRoot"] is True
    (c,) = pred["containers"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert {m["mountPath"] for m in c["volumeMounts"]} == {"/tmp", "/var/cache/lmops"}
    assert {v["name"]: v["emptyDir"] for v in pred["volumes"]} == {"tmp": {}, "cache": {}}
    assert "serve.cache_dir=/var/cache/lmops/serve" in c["args"]  # downloads go to the emptyDir


def test_registry_uri_is_resolved_by_the_container_with_a_secret_reference():
    cfg = DeployConfig(s3_secret="mlflow-s3", env={"MLFLOW_TRACKING_URI": "http://mlflow:5000"})
    m = render_inference_service(cfg, ServeConfig(), "models:/tiny@champion")
    assert_valid(m)
    (c,) = m["spec"]["predictor"]["containers"]
    assert "models:/tiny@champion" in c["args"]
    assert not any(e["name"] == "STORAGE_URI" for e in c["env"])
    assert c["envFrom"] == [{"secretRef": {"name": "mlflow-s3"}}]
    assert "canaryTrafficPercent" not in m["spec"]["predictor"] and "nvidia.com/gpu" not in c["resources"]["limits"]


def test_huggingface_runtime_for_the_same_directory():
    cfg = DeployConfig(runtime="huggingface", service_account="s3-reader", canary_traffic_percent=25)
    m = render_inference_service(cfg, ServeConfig(), "s3://models/run-7/checkpoint")
    assert_valid(m)
    model = m["spec"]["predictor"]["model"]
    assert model["modelFormat"] == {"name": "huggingface"} and model["storageUri"] == "s3://models/run-7/checkpoint"
    assert "--backend=huggingface" in model["args"]  # CPU: no vLLM
    assert model["securityContext"]["readOnlyRootFilesystem"] is True
    with pytest.raises(LmopsError, match="storage URI"):
        render_inference_service(cfg, ServeConfig(), "models:/tiny@champion")


def test_s3_download_needs_the_service_account_the_storage_initializer_reads():
    # KServe's storage initializer reads S3 credentials from the ServiceAccount, never the container's envFrom
    for cfg in (DeployConfig(runtime="huggingface"), DeployConfig(runtime="huggingface", s3_secret="s3-creds"),
                DeployConfig(s3_secret="s3-creds")):
        with pytest.raises(LmopsError, match="deploy.service_account: required"):
            render_inference_service(cfg, ServeConfig(), "s3://models/run-7/checkpoint")
    with pytest.raises(ConfigError, match=r"deploy: .*deploy.service_account: required for runtime=huggingface"):
        config_from_dict({"deploy": {"runtime": "huggingface", "storage_uri": "s3://m/v1", "s3_secret": "s3-creds"}})
    # a node identity / public bucket may still serve the lmops runtime without either
    assert_valid(render_inference_service(DeployConfig(), ServeConfig(), "s3://public/model"))


def test_env_names_lmops_sets_or_repeats_are_refused_with_the_key():
    for name in ("STORAGE_URI", "HOME"):
        with pytest.raises(ConfigError, match=rf"deploy.env: .*\['{name}'\]: set by lmops itself"):
            config_from_dict({"deploy": {"env": {name: "x"}}})
    with pytest.raises(ConfigError, match="deploy.env: .*not valid environment variable names"):
        config_from_dict({"deploy": {"env": {"1BAD": "x"}}})


def test_scheduling_fields_are_validated_like_kuberay():
    for bad, where in (({"tolerations": [{"key": "a", "operater": "Exists"}]}, r"deploy.tolerations: .*\['operater'\]"),
                       ({"tolerations": [{"operator": "Exists", "value": "x"}]}, "takes no value"),
                       ({"node_selector": {"bad key!": "x"}}, "deploy.node_selector: .*not a label key"),
                       ({"resources": {"memory": "2 gigs"}}, "deploy.resources.memory: .*quantity")):
        with pytest.raises(ConfigError, match=where):
            config_from_dict({"deploy": bad})


def test_credentials_are_never_inlined():
    with pytest.raises(ConfigError, match="credentials"):
        config_from_dict({"deploy": {"env": {"AWS_SECRET_ACCESS_KEY": "hunter2"}}})
    m = render_inference_service(DeployConfig(service_account="sa", s3_secret="sec"), ServeConfig(), "s3://b/m")
    text = yaml.safe_dump(m)
    assert "AWS_" not in text and "hunter2" not in text


def test_checks_refuse_what_the_api_server_or_a_restricted_namespace_would():
    good = render_inference_service(DeployConfig(canary_traffic_percent=5), ServeConfig(), "models:/m/1")
    assert rendered_problems(good) == []
    typo = copy.deepcopy(good)
    typo["spec"]["predictor"]["canaryTraficPercent"] = typo["spec"]["predictor"].pop("canaryTrafficPercent")
    bad_quantity = copy.deepcopy(good)
    bad_quantity["spec"]["predictor"]["containers"][0]["resources"]["limits"]["memory"] = "2 gigs"
    twice = copy.deepcopy(good)
    twice["spec"]["predictor"]["containers"][0]["env"].append({"name": "HOME", "value": "/root"})
    root = copy.deepcopy(good)
    del root["spec"]["predictor"]["containers"][0]["securityContext"]
    root["spec"]["predictor"]["securityContext"]["runAsNonRoot"] = False
    for broken, expected in ((typo, "canaryTraficPercent"), (bad_quantity, "limits"),
                             (twice, "duplicate entry (name='HOME'"), (root, "runAsNonRoot must be true")):
        problems = "\n".join(rendered_problems(broken))
        assert expected in problems, problems
    assert any("env[" in p for p in crd_schema.problems(twice))


def test_api_keys_come_from_a_secret_reference_never_a_literal():
    m = render_inference_service(DeployConfig(api_key_secret="lmops-api-keys"),
                                 ServeConfig(rate_limit_requests_per_minute=60), "models:/m/1")
    (c,) = m["spec"]["predictor"]["containers"]
    assert "serve.rate_limit_requests_per_minute=60" in c["args"] and "serve.max_queued_requests=256" in c["args"]
    assert not any("tokens_per_minute" in a for a in c["args"])
    assert {"name": "LMOPS_API_KEYS", "valueFrom": {"secretKeyRef": {"name": "lmops-api-keys", "key": "api-keys"}}} \
        in c["env"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/v1/models/lmops-lm"  # KServe v1 readiness needs no key
    assert rendered_problems(m) == []
    with pytest.raises(ConfigError, match="LMOPS_API_KEYS"):
        config_from_dict({"deploy": {"env": {"LMOPS_API_KEYS": "sk-literal"}}})
    with pytest.raises(ConfigError, match="credentials"):
        config_from_dict({"deploy": {"env": {"MY_API_KEY": "sk-literal"}}})
    with pytest.raises(ConfigError, match="runtime=lmops"):
        config_from_dict({"deploy": {"runtime": "huggingface", "api_key_secret": "k"}})
