"""The Helm chart and manifests/, offline: rendered (helm-python-sdk), linted, strictly validated against
Kubernetes 1.30 and the newest schemas (kubernetes-validate), CRDs and RBAC equal to manifests/, security
settings of the operator Deployment. Installing on the real API server is in tests/cluster."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "lmops"
VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]


def render(values=None) -> list[dict]:
    from helm_python.chart import Chart

    with Chart.load(str(CHART)) as chart:
        out = chart.render(values or {}, name="lmops", namespace="lmops")
    return [d for text in out.values() for d in yaml.safe_load_all(text) if d]


def manifests() -> list[dict]:
    return [d for p in sorted((REPO / "manifests").glob("*/*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]


def test_lint_clean():
    from helm_python.chart import lint

    result = lint(str(CHART))
    assert result["errors"] == [] and all(m["severity"] < 3 for m in result["messages"]), result


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("values", [{}, {"mlflow": {"enabled": True, "trackingUri": "http://mlflow:5000"}},
                                    {"webhook": {"enabled": False}}, {"serving": {"apiKeySecret": "lmops-api-keys"}}])
def test_rendered_chart_is_strictly_valid(values, version):
    docs = render(values)
    assert {d["kind"] for d in docs} >= {"ServiceAccount", "Role", "RoleBinding", "Deployment"}
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("version", VERSIONS)
def test_manifests_are_strictly_valid(version):
    docs = manifests()
    assert {d["kind"] for d in docs} >= {"CustomResourceDefinition", "Role", "Deployment", "Service", "LMTrainingJob"}
    for doc in docs:
        if doc["apiVersion"].startswith("lmops.dev/"):
            continue  # our kinds: validated against our CRDs in tests/crd
        kubernetes_validate.validate(doc, version, strict=True)


def test_chart_crds_are_the_manifests_crds():
    ours = sorted(p.name for p in (REPO / "manifests" / "crds").glob("*.yaml"))
    assert sorted(p.name for p in (CHART / "crds").glob("*.yaml")) == ours
    for name in ours:
        assert (CHART / "crds" / name).read_bytes() == (REPO / "manifests" / "crds" / name).read_bytes(), name


def test_chart_role_is_the_manifests_role():
    role = next(d for d in render() if d["kind"] == "Role" and d["metadata"]["name"] == "lmops-operator")
    assert role["rules"] == yaml.safe_load((REPO / "manifests" / "rbac" / "role.yaml").read_text())["rules"]


@pytest.mark.parametrize("source", ["chart", "manifests"])
def test_operator_deployment_is_locked_down(source):
    docs = render() if source == "chart" else manifests()
    dep = next(d for d in docs if d["kind"] == "Deployment" and "operator" in d["metadata"]["name"])
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False and c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
    assert c["livenessProbe"]["httpGet"] and c["readinessProbe"]["httpGet"]
    assert pod["serviceAccountName"].endswith("operator")
    assert not any("value" in e and "SECRET" in e["name"] for e in c["env"]), "secrets only by reference"


@pytest.mark.parametrize("source", ["chart", "manifests"])
def test_every_pod_is_restricted_and_runs_the_image_setting(source):
    from lmops.config import ImageConfig
    from rendered_checks import rendered_problems

    docs = render({"mlflow": {"enabled": True, "trackingUri": "http://mlflow:5000"}}) if source == "chart" else manifests()
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    assert len(deployments) == (2 if source == "chart" else 1)
    for dep in deployments:
        assert rendered_problems(dep) == [], dep["metadata"]["name"]  # restricted + read-only root, k8s 1.30+
        (c,) = dep["spec"]["template"]["spec"]["containers"]
        assert c["image"] == ImageConfig().ref("cpu"), dep["metadata"]["name"]
    operator = next(d for d in deployments if "operator" in d["metadata"]["name"])
    env = {e["name"]: e.get("value") for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]}
    # the operator renders InferenceServices with the same image setting (lmops.operator.run.image_from_env)
    assert (env["LMOPS_IMAGE_REPOSITORY"], env["LMOPS_IMAGE_TAG"]) == (ImageConfig().repository, ImageConfig().tag)


def test_chart_image_values_follow_the_image_setting():
    docs = render({"image": {"repository": "registry.local/ml/lmops", "tag": "v2", "pullPolicy": "Always"}})
    (c,) = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert c["image"] == "registry.local/ml/lmops:v2-cpu" and c["imagePullPolicy"] == "Always"
    assert env["LMOPS_IMAGE_TAG"] == "v2" and env["LMOPS_IMAGE_PULL_POLICY"] == "Always"


def test_api_key_secret_reaches_the_operator_as_a_reference():
    for values, expected in (({}, None), ({"serving": {"apiKeySecret": "lmops-api-keys"}}, "lmops-api-keys")):
        docs = render(values)
        (c,) = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in c["env"]}
        assert env.get("LMOPS_SERVING_API_KEY_SECRET", {}).get("value") == expected
        if expected:
            assert env["LMOPS_API_KEYS"] == {"name": "LMOPS_API_KEYS", "valueFrom": {"secretKeyRef": {
                "name": expected, "key": "api-keys"}}}
        else:
            assert "LMOPS_API_KEYS" not in env


@pytest.mark.parametrize("values,where", [({"webhook": {"enabled": "yes"}}, "enabled"),
                                          ({"serving": {"apiKeySecret": "Not A Name"}}, "apiKeySecret"),
                                          ({"operator": {"pollSeconds": 0}}, "pollSeconds"),
                                          ({"mlflow": {"trackingUri": "mlflow:5000"}}, "trackingUri"),
                                          ({"imagee": {}}, "imagee")])
def test_values_schema_refuses(values, where):
    from helm_python.chart import Chart

    with Chart.load(str(CHART)) as chart:
        with pytest.raises(Exception) as e:
            chart.validate_schema(values)
    assert where in str(e.value)


def test_uninstall_hook_waits_for_the_operator_not_for_itself():
    """The finalizers are released after the operator's pods are gone (a running operator puts them back); the
    hook's own pod must not match the operator's selector, or it would wait for itself."""
    docs = render()
    job = next(d for d in docs if d["kind"] == "Job" and d["metadata"]["name"] == "lmops-release-finalizers")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-delete"
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    selector = dict(p.split("=") for p in command[command.index("--wait-pods-gone") + 1].split(","))
    operator = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "lmops-operator")
    assert operator["spec"]["selector"]["matchLabels"] == selector
    assert not selector.items() <= job["spec"]["template"]["metadata"]["labels"].items()
    # the release's ServiceAccount is gone by then: the hook brings its own, with only what it needs
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "lmops-release-finalizers"
    role = next(d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "lmops-release-finalizers")
    assert {v for r in role["rules"] for v in r["verbs"]} == {"get", "list", "patch"}

