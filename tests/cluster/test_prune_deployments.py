"""`lmops registry prune` protects what ModelDeployments serve: their statuses read from the real API server."""

from __future__ import annotations

import uuid

from lmops import kube
from lmops.crd import API_VERSION
from lmops.registry.prune import deployment_references


def test_model_deployment_statuses_name_the_protected_versions(kube_cluster, kube_namespace):
    client = kube_cluster.client()
    model = f"prune-{uuid.uuid4().hex[:8]}"
    for name, served, status in (("lm", model, {"stableVersion": "3", "canaryVersion": "5", "previousVersion": "2"}),
                                 ("other", "another-model", {"stableVersion": "4"})):
        kube.apply({"apiVersion": API_VERSION, "kind": "ModelDeployment",
                    "metadata": {"name": name, "namespace": kube_namespace}, "spec": {"model": {"name": served}}},
                   client=client)
        kube.patch_status(API_VERSION, "ModelDeployment", name, kube_namespace, status, client=client)
    where = f"ModelDeployment {kube_namespace}/lm"
    assert deployment_references(model, client=client) == {
        "3": [f"stable of {where}"], "5": [f"canary of {where}"], "2": [f"previous of {where}"]}
