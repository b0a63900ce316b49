"""Rendered InferenceServices validate against (our copy of part of) KServe's CRD schema."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml

from lmops.config import ConfigError, DeployConfig, ServeConfig, config_from_dict
from lmops.errors import LmopsError
from lmops.serve.inference_service import render_inference_service

SCHEMA = yaml.safe_load((Path(__file__).parent / "inferenceservice_v1beta1_schema.yaml").read_text())


def validate(manifest: dict) -> None:
    jsonschema.validate(manifest, SCHEMA, cls=jsonschema.Draft202012Validator)


def test_lmops_predictor_with_gpu_canary_and_service_account():
    cfg = DeployConfig(image="registry.local/lmops:1.2", service_account="s3-reader", canary_traffic_percent=10,
                       resources={"cpu": "4", "memory": "16Gi", "gpus": 1}, env={"LOG_LEVEL": "info"})
    m = render_inference_service(cfg, ServeConfig(), "s3://models/run-7/checkpoint")
    validate(m)
    pred = m["spec"]["predictor"]
    assert pred["canaryTrafficPercent"] == 10 and pred["serviceAccountName"] == "s3-reader"
    (c,) = pred["containers"]
    assert c["image"] == "registry.local/lmops:1.2"
    assert {"name": "STORAGE_URI", "value": "s3://models/run-7/checkpoint"} in c["env"]
    assert c["args"][:3] == ["serve", "--model", "/mnt/models"] and "0.0.0.0" in c["args"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1 == c["resources"]["requests"]["nvidia.com/gpu"]


def test_registry_uri_is_resolved_by_the_container_with_a_secret_reference():
    cfg = DeployConfig(s3_secret="mlflow-s3", env={"MLFLOW_TRACKING_URI": "http://mlflow:5000"})
    m = render_inference_service(cfg, ServeConfig(), "models:/tiny@champion")
    validate(m)
    (c,) = m["spec"]["predictor"]["containers"]
    assert "models:/tiny@champion" in c["args"]
    assert not any(e["name"] == "STORAGE_URI" for e in c["env"])
    assert c["envFrom"] == [{"secretRef": {"name": "mlflow-s3"}}]
    assert "canaryTrafficPercent" not in m["spec"]["predictor"] and "nvidia.com/gpu" not in c["resources"]["limits"]


def test_huggingface_runtime_for_the_same_directory():
    cfg = DeployConfig(runtime="huggingface", service_account="s3-reader", canary_traffic_percent=25)
    m = render_inference_service(cfg, ServeConfig(), "s3://models/run-7/checkpoint")
    validate(m)
    model = m["spec"]["predictor"]["model"]
    assert model["modelFormat"] == {"name": "huggingface"} and model["storageUri"] == "s3://models/run-7/checkpoint"
    assert "--backend=huggingface" in model["args"]  # CPU: no vLLM
    with pytest.raises(LmopsError, match="storage URI"):
        render_inference_service(cfg, ServeConfig(), "models:/tiny@champion")


def test_credentials_are_never_inlined():
    with pytest.raises(ConfigError, match="credentials"):
        config_from_dict({"deploy": {"env": {"AWS_SECRET_ACCESS_KEY": "hunter2"}}})
    m = render_inference_service(DeployConfig(service_account="sa", s3_secret="sec"), ServeConfig(), "s3://b/m")
    text = yaml.safe_dump(m)
    assert "AWS_" not in text and "hunter2" not in text


def test_schema_rejects_what_the_api_server_would_prune_or_refuse():
    good = render_inference_service(DeployConfig(canary_traffic_percent=5), ServeConfig(), "s3://b/m")
    typo = copy.deepcopy(good)
    typo["spec"]["predictor"]["canaryTraficPercent"] = typo["spec"]["predictor"].pop("canaryTrafficPercent")
    bad_quantity = copy.deepcopy(good)
    bad_quantity["spec"]["predictor"]["containers"][0]["resources"]["limits"]["memory"] = "2 gigs"
    for broken in (typo, bad_quantity):
        with pytest.raises(jsonschema.ValidationError):
            validate(broken)
