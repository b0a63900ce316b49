"""The CRDs as files: structural, no CEL, defaults that agree with lmops.crd, samples valid, bad specs refused.

The API server's own verdict on them is in tests/cluster (needs `lmops cluster`); here the schema is
checked with jsonschema, which speaks the same OpenAPI subset we use.
"""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml

from lmops.crd import SpecError, load_crd, parse_deployment, parse_training_job

REPO = Path(__file__).resolve().parents[2]
PLURALS = ("lmtrainingjobs", "modeldeployments")
K8S_ONLY = ("x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string", "x-kubernetes-list-type",
            "x-kubernetes-list-map-keys", "x-kubernetes-map-type", "x-kubernetes-embedded-resource")


def schema(plural: str) -> dict:
    return load_crd(plural)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def walk(node, path="$"):
    if isinstance(node, dict):
        yield path, node
        for k, v in node.items():
            yield from walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, f"{path}[{i}]")


def apply_defaults(s: dict, obj):
    """What the API server does on create: fill in every default, inside defaults too."""
    if s.get("type") == "object" and isinstance(obj, dict):
        for key, sub in (s.get("properties") or {}).items():
            if key not in obj and "default" in sub:
                obj[key] = copy.deepcopy(sub["default"])
            if key in obj:
                obj[key] = apply_defaults(sub, obj[key])
    elif s.get("type") == "array" and isinstance(obj, list):
        return [apply_defaults(s["items"], x) for x in obj]
    return obj


def without_empty(d):
    """Empty maps and lists the models default to are absent fields on the server."""
    if isinstance(d, dict):
        return {k: without_empty(v) for k, v in d.items() if v not in ({}, [])}
    return [without_empty(x) for x in d] if isinstance(d, list) else d


@pytest.mark.parametrize("plural", PLURALS)
def test_crd_is_structural_without_cel(plural):
    crd = load_crd(plural)
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    assert crd["spec"]["names"]["shortNames"] and version["additionalPrinterColumns"]
    for path, node in walk(schema(plural)["properties"]):
        assert "x-kubernetes-validations" not in node, f"{path}: CEL rules are dropped by a 1.20 API server"
        if path.endswith(".properties") or path.endswith(".default"):
            continue
        if "properties" in node or "items" in node or "additionalProperties" in node:
            assert "type" in node, f"{path}: a structural schema gives every node a type"
            assert not ("properties" in node and "additionalProperties" in node), path


@pytest.mark.parametrize("plural,spec,parse", [
    ("lmtrainingjobs", {"modelName": "m"}, parse_training_job),
    ("modeldeployments", {"model": {"name": "m"}}, parse_deployment),
    ("modeldeployments", {"model": {"name": "m"}, "rollout": {"steps": [{"trafficPercent": 5}],
                                                           "gates": {"qualityProbe": {"texts": ["x"]}}}},
     parse_deployment),
])
def test_schema_defaults_equal_model_defaults(plural, spec, parse):
    """A spec defaulted by the schema and one defaulted by lmops.crd are the same spec."""
    server = apply_defaults(schema(plural)["properties"]["spec"], copy.deepcopy(spec))
    ours = without_empty(parse(spec).model_dump(by_alias=True, exclude_none=True))
    assert ours == server
    assert parse(server) == parse(spec)


@pytest.mark.parametrize("sample", sorted((REPO / "manifests" / "samples").glob("*.yaml")))
def test_samples_are_valid(sample):
    obj = yaml.safe_load(sample.read_text())
    plural = {"LMTrainingJob": "lmtrainingjobs", "ModelDeployment": "modeldeployments"}[obj["kind"]]
    jsonschema.validate(obj, schema(plural))
    parse = parse_training_job if plural == "lmtrainingjobs" else parse_deployment
    parse(apply_defaults(schema(plural)["properties"]["spec"], obj["spec"]))


@pytest.mark.parametrize("plural,spec,where", [
    ("modeldeployments", {"model": {"name": "m"}, "serving": {"runtime": "vllm"}}, "runtime"),
    ("modeldeployments", {"model": {"name": "m"}, "rollout": {"steps": [{"trafficPercent": 100}]}}, "trafficPercent"),
    ("modeldeployments", {"model": {"name": "m", "version": "v2"}}, "version"),
    ("modeldeployments", {"model": {}}, "name"),
    ("lmtrainingjobs", {"modelName": "m", "executor": {"type": "argo"}}, "type"),
    ("lmtrainingjobs", {"modelName": "m", "ray": {"workers": 0}}, "workers"),
])
def test_schema_refuses(plural, spec, where):
    """Refused by the schema (the API server answers 422 naming the field); lmops.crd agrees."""
    with pytest.raises(jsonschema.ValidationError) as e:
        jsonschema.validate({"spec": spec}, schema(plural))
    assert where in e.value.json_path or where in e.value.message
    parse = parse_training_job if plural == "lmtrainingjobs" else parse_deployment
    with pytest.raises(SpecError) as e2:
        parse(spec)
    assert where in e2.value.field


@pytest.mark.parametrize("spec,field", [
    ({"model": {"name": "m"}, "rollout": {"steps": [{"trafficPercent": 50}, {"trafficPercent": 20}]}},
     "spec.rollout.steps[1].trafficPercent"),
    ({"model": {"name": "m"}, "rollout": {"gates": {"qualityProbe": {"texts": ["a"], "uri": "s3://b/k"}}}},
     "spec.rollout.gates.qualityProbe.uri"),
    ({"model": {"name": "m"}, "rollout": {"gates": {"qualityProbe": {"maxRegression": 0.1}}}},
     "spec.rollout.gates.qualityProbe.texts"),
    ({"model": {"name": "m"}, "serving": {"minReplicas": 3, "maxReplicas": 2}}, "spec.serving.minReplicas"),
])
def test_operator_flags_what_the_schema_cannot_say(spec, field):
    jsonschema.validate({"spec": spec}, schema("modeldeployments"))  # the API server accepts these
    with pytest.raises(SpecError) as e:
        parse_deployment(spec)
    assert e.value.field == field


def test_training_job_overrides_checked_against_the_config():
    jsonschema.validate({"spec": {"modelName": "m", "overrides": {"train.max_stepz": "3"}}}, schema("lmtrainingjobs"))
    with pytest.raises(SpecError) as e:
        parse_training_job({"modelName": "m", "overrides": {"train.max_stepz": "3"}})
    assert e.value.field == "spec.overrides[train.max_stepz]" and "max_stepz" in e.value.message
    with pytest.raises(SpecError) as e:
        parse_training_job({"modelName": "m", "executor": {"type": "kfp"}})
    assert e.value.field == "spec.executor.kfp.host"
    assert parse_training_job({"modelName": "m", "overrides": {"train.max_steps": "3"}}).override_list() == \
        ["train.max_steps=3"]
