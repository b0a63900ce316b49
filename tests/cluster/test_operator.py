"""The operator on `lmops cluster` (real API server with RBAC, the KServe stand-in's predictor pods of the lmops
image on the node), a real MLflow server. The operator runs in its pod, installed from the Helm chart (its
ServiceAccount and Role, the lmops image from the node's containerd); the kill test deletes that pod with grace 0
at four points of a rollout. Two tests run it as a process with the ServiceAccount token of manifests/rbac
instead: the invalid spec (nothing to roll out: a pod's start would only cost time) and the kill test's rollback
with its failpoints (a process that SIGKILLs itself stays dead, so what MLflow holds at that moment can be
checked; a pod's container would be restarted, or replaced, at once and go on writing). The operator is given MLflow's address as pods reach it (the node's relay): it renders that
address into the InferenceService, whose predictor resolves ``models:/`` itself.

One model, four versions: v1 and v2 good (untrained, different seeds: the same bits per byte within a few
percent), v3 loads but scores far worse (its final norm scaled up: confident and wrong), v4 does not load
(a version with no model files).
"""

from __future__ import annotations

import time
import uuid

import pytest

from operator_world import (SECRET, install_operator_pod, md_body, register_versions,  # noqa: I001
                            service_account_kubeconfig, start_operator, stop_operator, wait_for)

from lmops import kube
from lmops.crd import API_VERSION

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
MD, ISVC = "ModelDeployment", ("serving.kserve.io/v1beta1", "InferenceService")


@pytest.fixture(scope="module")
def versions(tmp_path_factory, mlflow_server):
    """(model name, {label: version}) registered in the session's MLflow."""
    return register_versions(mlflow_server, tmp_path_factory.mktemp("versions"))


@pytest.fixture
def operator_env(kube_cluster, kube_namespace, tmp_path, mlflow_server, node_image):
    kubeconfig, token = service_account_kubeconfig(kube_cluster, kube_namespace, tmp_path / "sa.kubeconfig")
    return kube_cluster, kube_namespace, kubeconfig, token


def status(admin, ns, name) -> dict:
    return ((kube.get(API_VERSION, MD, name, ns, client=admin) or {}).get("status")) or {}


def outcomes(st: dict) -> list[tuple[str, str]]:
    return [(e["version"], e["outcome"]) for e in st.get("history") or []]


def set_alias(mlflow_server, model, version):
    from mlflow import MlflowClient

    MlflowClient(mlflow_server).set_registered_model_alias(model, "champion", version)


def alias(mlflow_server, model):
    from mlflow import MlflowClient

    return str(MlflowClient(mlflow_server).get_model_version_by_alias(model, "champion").version)


def served(admin, ns, name) -> tuple[str | None, int | None]:
    """(the predictor spec's version, its canaryTrafficPercent); after KServe's rollback (percent 0) the spec
    still names the rejected version but the stable one takes all traffic: (the stable version, None)."""
    isvc = kube.get(*ISVC, name, ns, client=admin) or {}
    pred = (isvc.get("spec") or {}).get("predictor") or {}
    if pred.get("canaryTrafficPercent") == 0:
        return isvc["metadata"]["annotations"].get("lmops.dev/stable-version"), None
    args = (pred.get("containers") or [{}])[0].get("args") or []
    uri = next((a for a in args if a.startswith("models:/")), None)
    return (uri.rsplit("/", 1)[1] if uri else None), pred.get("canaryTrafficPercent")


def test_rollout_promote_and_roll_back(operator_env, versions, mlflow_server, mlflow_for_pods, node_image):
    cluster, ns, _, _ = operator_env
    admin = cluster.client()
    model, v = versions
    set_alias(mlflow_server, model, v["good1"])
    op = install_operator_pod(cluster, ns, mlflow_for_pods, node_image, poll_s=2)
    try:
        kube.apply({**md_body("demo", model), "metadata": {"name": "demo", "namespace": ns}}, client=admin)
        wait_for("first version deployed and ready", lambda: (lambda s: s.get("stableVersion") == v["good1"] and any(
            c["type"] == "Ready" and c["status"] == "True" for c in s.get("conditions") or []))(status(admin, ns, "demo")),
            180, operator=op, describe=lambda: status(admin, ns, 'demo').get('history'))
        isvc = kube.get(*ISVC, "demo", ns, client=admin)
        assert isvc["metadata"]["ownerReferences"][0]["kind"] == MD

        # a good version: canary at 20%, then 50%, then promoted
        set_alias(mlflow_server, model, v["good2"])
        seen = set()

        def promoted():
            seen.add(served(admin, ns, "demo"))
            return (v["good2"], "Promoted") in outcomes(status(admin, ns, "demo"))
        wait_for("good version promoted", promoted, 240, operator=op, describe=lambda: status(admin, ns, 'demo').get('history'))
        assert (v["good2"], 20) in seen or (v["good2"], 50) in seen, seen
        wait_for("InferenceService on the promoted version", lambda: served(admin, ns, "demo") == (v["good2"], None), 30)
        st = status(admin, ns, "demo")
        assert st["phase"] == "Stable" and st["previousVersion"] == v["good1"]
        assert {r["gate"] for r in st["gateResults"]} >= {"quality", "errorRate"}

        # worse quality: rolled back, traffic and alias
        for bad, gate in ((v["worse"], "quality"), (v["broken"], "ready")):
            set_alias(mlflow_server, model, bad)
            wait_for(f"version {bad} rolled back", lambda: (bad, "RolledBack") in outcomes(status(admin, ns, "demo"))
                     and status(admin, ns, "demo").get("phase") == "Stable", 240, operator=op, describe=lambda: status(admin, ns, 'demo').get('history'))
            st = status(admin, ns, "demo")
            last = st["history"][-1]
            assert last["version"] == bad and f"gate {gate} failed" in last["reason"]
            assert st["stableVersion"] == v["good2"]
            assert alias(mlflow_server, model) == v["good2"], "the alias is moved back"
            wait_for("traffic back on the stable version", lambda: served(admin, ns, "demo") == (v["good2"], None), 30)
            from mlflow import MlflowClient

            tags = MlflowClient(mlflow_server).get_model_version(model, bad).tags
            assert tags["lmops.rollout.outcome"] == "RolledBack" and f"gate {gate} failed" in tags["lmops.rollout.reason"]
            events, _ = kube.list_objects("v1", "Event", ns, client=admin)
            assert any(e["reason"] == "RolledBack" and f"version {bad}" in e["message"] for e in events)
        assert sum(o == "Promoted" for _, o in outcomes(status(admin, ns, "demo"))) == 1
        # KServe's rollbacks stopped both bad versions' pods and started no new revision of the stable version:
        # the one predictor pod alive is the promoted revision's
        pred = kube.get(*ISVC, "demo", ns, client=admin)["status"]["components"]["predictor"]

        def predictor_pods():
            pods, _ = kube.list_objects("v1", "Pod", ns, client=admin)
            return [p["metadata"]["labels"]["serving.knative.dev/revision"] for p in pods  # the operator's pod aside
                    if "serving.knative.dev/revision" in p["metadata"]["labels"] and not p["metadata"].get("deletionTimestamp")]
        wait_for("only the stable revision's pod", lambda: predictor_pods() == [pred["latestRolledoutRevision"]], 90,
                 describe=predictor_pods)
        assert [t["revisionName"] for t in pred["traffic"]] == [pred["latestRolledoutRevision"]]
    finally:
        stop_operator(op)


def test_operator_token_is_least_privilege(operator_env):
    cluster, ns, _, token = operator_env
    sa = cluster.client(token)
    with pytest.raises(kube.KubeError) as e:
        kube.delete(*ISVC, "anything", ns, client=sa)  # the operator never deletes (ownership does)
    assert e.value.status == 403
    with pytest.raises(kube.KubeError) as e:
        kube.get("v1", "Secret", "anything", ns, client=sa)
    assert e.value.status == 403
    with pytest.raises(kube.KubeError) as e:
        kube.list_objects(API_VERSION, MD, "default", client=sa)  # another namespace
    assert e.value.status == 403
    assert kube.list_objects(API_VERSION, MD, ns, client=sa)[0] == []


def test_invalid_resources_refused_or_flagged(operator_env, mlflow_server, mlflow_for_pods, tmp_path):
    cluster, ns, kubeconfig, _ = operator_env
    admin = cluster.client()
    bad = md_body("bad-enum", "m")
    bad["metadata"]["namespace"] = ns
    bad["spec"]["serving"] = {"runtime": "vllm"}
    with pytest.raises(kube.KubeError) as e:
        kube.apply(bad, client=admin)
    assert e.value.status == 422 and "spec.serving.runtime" in str(e.value)
    flagged = md_body("falling", "m", steps=[{"trafficPercent": 50}, {"trafficPercent": 20}])
    flagged["metadata"]["namespace"] = ns
    kube.apply(flagged, client=admin)
    op = start_operator(kubeconfig, ns, mlflow_for_pods, tmp_path, poll_s=2)
    try:
        cond = wait_for("SpecValid=False", lambda: next((c for c in status(admin, ns, "falling").get("conditions") or []
                                                         if c["type"] == "SpecValid" and c["status"] == "False"), None),
                        60, operator=op, describe=lambda: status(admin, ns, 'falling'))
        assert "spec.rollout.steps[1].trafficPercent" in cond["message"]
        assert kube.get(*ISVC, "falling", ns, client=admin) is None, "nothing is served from an invalid spec"
    finally:
        stop_operator(op)


def canary_applied(admin, ns, name, version) -> bool:
    isvc = kube.get(*ISVC, name, ns, client=admin) or {}
    return (isvc.get("metadata") or {}).get("annotations", {}).get("lmops.dev/canary-version") == version


def deployed(admin, ns, name, version):
    return lambda: (lambda s: s.get("stableVersion") == version and s.get("phase") == "Stable" and any(
        c["type"] == "Ready" and c["status"] == "True" for c in s.get("conditions") or []))(status(admin, ns, name))


@pytest.mark.parametrize("path", ["webhook", "poll"])
def test_webhook_and_poll_paths_converge(path, operator_env, versions, mlflow_server, mlflow_for_pods, node_image):
    """With webhooks the canary starts within seconds although the poll is a minute; with webhooks off the poll
    alone gets there. MLflow posts its webhooks to the operator pod's webhook Service."""
    from mlflow import MlflowClient

    cluster, ns, _, _ = operator_env
    admin = cluster.client()
    model, v = versions
    set_alias(mlflow_server, model, v["good1"])
    hooks = path == "webhook"
    op = install_operator_pod(cluster, ns, mlflow_for_pods, node_image, poll_s=60 if hooks else 2, webhooks=hooks)
    client = MlflowClient(mlflow_server)
    hook = None
    name = f"md-{path}"
    try:
        if hooks:
            wait_for("webhook receiver up", lambda: _answers(op.webhook_url), 30, operator=op)
            hook = client.create_webhook(name=f"{name}-{uuid.uuid4().hex[:4]}", url=op.webhook_url, secret=SECRET,
                                         events=["model_version_alias.created"])
        kube.apply({**md_body(name, model), "metadata": {"name": name, "namespace": ns}}, client=admin)
        wait_for("first version deployed", deployed(admin, ns, name, v["good1"]), 180, operator=op)
        t0 = time.monotonic()
        set_alias(mlflow_server, model, v["good2"])
        wait_for("canary InferenceService", lambda: canary_applied(admin, ns, name, v["good2"]), 90, interval=0.05,
                 operator=op)
        took = time.monotonic() - t0
        assert took < (10 if hooks else 30), f"{path}: canary after {took:.1f}s"
        wait_for("promoted", lambda: (v["good2"], "Promoted") in outcomes(status(admin, ns, name)), 240, operator=op,
                 describe=lambda: status(admin, ns, name).get("history"))
    finally:
        if hook is not None:
            client.delete_webhook(hook.webhook_id)
        op.stop()


def alias_moves(client, model: str) -> list[tuple]:
    """The champion alias's history in MLflow: (action, previous, version) per move."""
    import json

    raw = (client.get_registered_model(model).tags or {}).get("lmops.alias.champion.history")
    return [(e["action"], e["previous"], e["version"]) for e in json.loads(raw or "[]")]


def _answers(url: str) -> bool:
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((parts.hostname, parts.port or 80)) == 0


def test_operator_pod_killed_at_every_stage_converges_without_double_promotion(operator_env, versions, mlflow_server,
                                                                              mlflow_for_pods, node_image, tmp_path):
    """The operator's pod is deleted with grace 0 (its container killed at once) as soon as each state is seen,
    and the Deployment starts another: canary recorded, canary applied, second step, promoted. Then the operator
    as a process is SIGKILLed once the rollback is recorded, and dies at failpoints between the rollback's MLflow
    writes (alias moved, history written, tags half written, outcome tags half written). The end is the
    uninterrupted end: one promotion, one rollback, history entries unique and in order, alias and traffic right,
    and in MLflow every alias move once with its previous holder and every tag of the rollback written."""
    from mlflow import MlflowClient

    cluster, ns, kubeconfig, _ = operator_env
    admin = cluster.client()
    model, v = versions
    client = MlflowClient(mlflow_server)
    before = len(alias_moves(client, model))  # the model's versions are shared with the other tests
    for key in client.get_model_version(model, v["worse"]).tags:  # as are the tags an earlier rollback left
        if key.startswith(("lmops.rollout.", "lmops.alias.champion.rolled_back", "lmops.alias.champion.rollback")):
            client.delete_model_version_tag(model, v["worse"], key)
    set_alias(mlflow_server, model, v["good1"])
    name = "md-kill"
    start = lambda: start_operator(kubeconfig, ns, mlflow_for_pods, tmp_path, poll_s=1)  # noqa: E731
    op = install_operator_pod(cluster, ns, mlflow_for_pods, node_image, poll_s=1)
    kube.apply({**md_body(name, model), "metadata": {"name": name, "namespace": ns}}, client=admin)
    kills = []
    try:
        wait_for("first version deployed", deployed(admin, ns, name, v["good1"]), 180, operator=op)
        points = [
            ("canary recorded", lambda s: s.get("phase") == "Progressing"),
            ("canary applied", lambda s: canary_applied(admin, ns, name, v["good2"])),
            ("second step", lambda s: s.get("canaryTrafficPercent") == 50),
            ("promoted", lambda s: (v["good2"], "Promoted") in outcomes(s)),
        ]
        set_alias(mlflow_server, model, v["good2"])
        for label, seen in points:
            wait_for(label, lambda: seen(status(admin, ns, name)), 240, interval=0.05, operator=op,
                     describe=lambda: status(admin, ns, name).get("history"))
            op.kill()
            kills.append(label)
        wait_for("promotion finished", deployed(admin, ns, name, v["good2"]), 120, operator=op)
        assert len(set(op.killed)) == 4, op.killed  # four pods, each killed once
        # the rollback on the operator as a process: its kills are failpoints too, and a pod's replacement would
        # go on with the rollback before they could be set
        stop_operator(op)
        op = start()
        set_alias(mlflow_server, model, v["worse"])
        wait_for("rollback recorded", lambda: status(admin, ns, name).get("phase") == "RollingBack"
                 or (v["worse"], "RolledBack") in outcomes(status(admin, ns, name)), 240, interval=0.05, operator=op,
                 describe=lambda: status(admin, ns, name).get("history"))
        op.kill()
        kills.append("rollback recorded")
        # then between the rollback's MLflow writes: the operator dies at each failpoint, and what MLflow holds
        # at that moment is checked; the restarts write what is missing, once
        rejected = lambda: client.get_model_version(model, v["worse"]).tags  # noqa: E731
        for point, held, reverted_tags, outcome_tags in [
                ("alias.moved", False, 0, 0),             # the alias is back; its history entry not written
                ("revert.history_written", True, 0, 0),   # the entry is written; the version's tags are not
                ("tags.partly_written", True, 1, 0),      # one of the two rollback tags
                ("tags.partly_written", True, 2, 1)]:     # then the outcome tags: the first of five
            op = start_operator(kubeconfig, ns, mlflow_for_pods, tmp_path, poll_s=1, failpoint=point)
            wait_for(f"operator killed at {point}", lambda: op.proc.poll() is not None, 120,
                     describe=lambda: op.text()[-2000:])
            assert op.proc.returncode == -9, op.text()[-3000:]
            kills.append(point)
            assert alias(mlflow_server, model) == v["good2"]
            assert (("rollback", v["worse"], v["good2"]) in alias_moves(client, model)[before:]) == held, point
            tags = rejected()
            assert sum(k in tags for k in ("lmops.alias.champion.rolled_back_at",
                                           "lmops.alias.champion.rollback_reason")) == reverted_tags, (point, tags)
            assert sum(k.startswith("lmops.rollout.") and k in tags for k in (
                "lmops.rollout.outcome", "lmops.rollout.reason", "lmops.rollout.at", "lmops.rollout.deployment",
                "lmops.rollout.rolledback")) == outcome_tags, (point, tags)
        op = start()
        wait_for("rollback finished", lambda: status(admin, ns, name).get("phase") == "Stable"
                 and served(admin, ns, name) == (v["good2"], None), 120, operator=op)
        st = status(admin, ns, name)
        assert kills == ["canary recorded", "canary applied", "second step", "promoted", "rollback recorded",
                         "alias.moved", "revert.history_written", "tags.partly_written", "tags.partly_written"]
        moves = alias_moves(client, model)[before:]
        assert len(moves) == 4 and moves[0][2] == v["good1"] and moves[1:] == [("external", v["good1"], v["good2"]),
                                                            ("external", v["good2"], v["worse"]),
                                                            ("rollback", v["worse"], v["good2"])], moves
        tags = rejected()
        assert tags["lmops.alias.champion.rolled_back_at"] == st["lastRollback"]["time"]
        assert tags["lmops.rollout.outcome"] == "RolledBack" and tags["lmops.rollout.reason"] == st["lastRollback"]["reason"]
        assert outcomes(st) == [(v["good1"], "Deployed"), (v["good2"], "CanaryStarted"), (v["good2"], "Promoted"),
                                (v["worse"], "CanaryStarted"), (v["worse"], "RolledBack")]
        seqs = [e["seq"] for e in st["history"]]
        assert seqs == list(range(1, len(seqs) + 1))
        assert alias(mlflow_server, model) == v["good2"] and st["stableVersion"] == v["good2"]
        wait_for("every outcome notified once", lambda: status(admin, ns, name).get("notifiedSeq") == seqs[-1], 30)
        events, _ = kube.list_objects("v1", "Event", ns, client=admin)
        mine = [e for e in events if e["involvedObject"]["name"] == name and e["source"].get("component") == "lmops-operator"]
        assert sorted(e["reason"] for e in mine) == sorted(o for _, o in outcomes(st))
    finally:
        stop_operator(op)
