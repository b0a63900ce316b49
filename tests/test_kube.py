"""lmops.kube against the real API server (`lmops cluster`): apply/get/delete, status writes, a watch that
recovers from an expired resourceVersion, and errors a user can act on."""

from __future__ import annotations

import socket

import pytest

from lmops import kube

pytestmark = pytest.mark.cluster


def _cm(ns: str, name: str, **data) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns}, "data": data}


def test_apply_is_idempotent_and_owned_by_lmops(kube_cluster, kube_namespace):
    client = kube_cluster.client()
    first = kube.apply(_cm(kube_namespace, "a", x="1"), client=client)
    again = kube.apply(_cm(kube_namespace, "a", x="1"), client=client)
    assert again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]  # a no-op
    assert [m["manager"] for m in again["metadata"]["managedFields"]] == ["lmops"]
    assert kube.get("v1", "ConfigMap", "a", kube_namespace, client=client)["data"] == {"x": "1"}
    assert kube.delete("v1", "ConfigMap", "a", kube_namespace, client=client) is True
    assert kube.delete("v1", "ConfigMap", "a", kube_namespace, client=client) is False
    assert kube.get("v1", "ConfigMap", "a", kube_namespace, client=client) is None


def test_watch_lists_then_follows_and_relists_after_410(kube_cluster, kube_namespace):
    client, ns = kube_cluster.client(), kube_namespace
    kube.apply(_cm(ns, "before"), client=client)
    events = iter(kube.Watch("v1", "ConfigMap", ns, client=client, request_timeout_s=5))
    kind, obj = next(events)
    assert (kind, obj["metadata"]["name"]) == ("ADDED", "before")
    kube.apply(_cm(ns, "after"), client=client)
    kind, obj = next(events)
    assert (kind, obj["metadata"]["name"]) == ("ADDED", "after")

    # a resourceVersion the server no longer keeps (etcd compacted past it): 410 Gone, then a fresh list
    _compact_etcd(kube_cluster)
    stale = kube.Watch("v1", "ConfigMap", ns, client=client, resource_version="1", request_timeout_s=5)
    got = {}
    for kind, obj in stale:
        got[obj["metadata"]["name"]] = kind
        if len(got) == 2:
            break
    assert stale.relists == 1 and got == {"before": "ADDED", "after": "ADDED"}  # new to this watcher


def _compact_etcd(cluster) -> None:
    """Compact etcd up to its current revision (etcd's JSON gateway), as the API server does every 5 min."""
    import requests

    etcd = f"http://127.0.0.1:{cluster.ports['etcd']}/v3/kv"
    revision = requests.post(f"{etcd}/range", json={"key": "AA=="}, timeout=10).json()["header"]["revision"]
    requests.post(f"{etcd}/compaction", json={"revision": revision, "physical": True}, timeout=30).raise_for_status()


def test_status_is_written_through_the_status_subresource(kube_cluster, kube_namespace):
    client, ns = kube_cluster.client(), kube_namespace
    job = {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "st", "namespace": ns},
           "spec": {"entrypoint": "true", "suspend": True}}  # suspended: the stand-in leaves it alone
    kube.apply(job, client=client)
    out = kube.patch_status("ray.io/v1", "RayJob", "st", ns, {"jobDeploymentStatus": "Suspended"}, client=client)
    assert out["status"]["jobDeploymentStatus"] == "Suspended"
    assert kube.patch_status("ray.io/v1", "RayJob", "gone", ns, {"jobStatus": "x"}, client=client) is None


def test_a_missing_kind_names_the_operator(kube_cluster):
    with pytest.raises(kube.KubeError, match=r"no kind TrainedModel \(serving.kserve.io/v1alpha1\) on this API server:"
                                             r" is KServe installed\?") as e:
        kube.get("serving.kserve.io/v1alpha1", "TrainedModel", "m", "default", client=kube_cluster.client())
    assert e.value.status == 404
    with pytest.raises(kube.KubeError, match="no kind Gadget .*is its CRD installed"):
        kube.apply({"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g", "namespace": "default"}},
                   client=kube_cluster.client())


def test_an_unreachable_api_server_says_where_it_looked():
    from kubernetes import client

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = client.Configuration()
    conf.host = f"https://127.0.0.1:{port}"
    conf.retries = False
    with pytest.raises(kube.KubeError, match=f"RayJob default/x: cannot reach the Kubernetes API server at"
                                             f" https://127.0.0.1:{port}"):
        kube.get("ray.io/v1", "RayJob", "x", "default", client=client.ApiClient(conf))


def test_422_lists_the_field_errors(kube_cluster, kube_namespace):
    bad = _cm(kube_namespace, "Not_A_Name")
    with pytest.raises(kube.KubeError, match=r"refused it as invalid: metadata.name: Invalid value: \"Not_A_Name\"") as e:
        kube.apply(bad, client=kube_cluster.client())
    assert e.value.status == 422
