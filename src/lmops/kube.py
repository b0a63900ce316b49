"""The only module that talks to the Kubernetes API.

Writes are server-side apply (``application/apply-patch+yaml`` with a field manager), so applying
the same manifest twice is a no-op, and fields other managers own (KServe's status and defaults,
an operator's traffic edits) are left alone. Credentials come from the pod's service account when
running in a cluster, else from the kubeconfig (``KUBECONFIG`` / ~/.kube/config).
"""

from __future__ import annotations

from typing import Any

from lmops.errors import LmopsError

FIELD_MANAGER = "lmops"


class KubeError(LmopsError, RuntimeError):
    """The API server refused or could not be reached; the message names the object."""


def api_client():
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, FileNotFoundError) as e:
            raise KubeError(f"no Kubernetes credentials (not in a cluster, no usable kubeconfig): {e}") from None
    return client.ApiClient()


def _describe(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata", {})
    return f"{obj.get('kind')} {meta.get('namespace', '')}/{meta.get('name')}"


def apply(obj: dict[str, Any], *, field_manager: str = FIELD_MANAGER, force: bool = True, client=None) -> dict[str, Any]:
    """Server-side apply one object; returns the object as the API server stored it.

    ``force``: take ownership of fields another manager set (lmops is the source of truth for
    the fields it renders).
    """
    from kubernetes import dynamic
    from kubernetes.client.exceptions import ApiException

    dyn = dynamic.DynamicClient(client or api_client())
    try:
        resource = dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        out = dyn.server_side_apply(resource, body=obj, namespace=obj.get("metadata", {}).get("namespace"),
                                    field_manager=field_manager, force_conflicts=force)
    except dynamic.exceptions.ResourceNotFoundError:
        raise KubeError(f"{_describe(obj)}: the API server does not know {obj['apiVersion']} {obj['kind']}"
                        f" (is the CRD installed?)") from None
    except ApiException as e:
        raise KubeError(f"{_describe(obj)}: apply refused: {e.status} {e.reason}: {e.body}") from None
    return out.to_dict()



def _dynamic(client, what: str):
    """A dynamic client and its discovery; an unreachable API server is a KubeError naming the object."""
    from kubernetes import dynamic
    from urllib3.exceptions import HTTPError

    try:
        return dynamic.DynamicClient(client or api_client())
    except HTTPError as e:
        raise KubeError(f"{what}: cannot reach the Kubernetes API server: {e}") from None


def _resource(dyn, api_version: str, kind: str, what: str):
    from kubernetes import dynamic
    from urllib3.exceptions import HTTPError

    try:
        return dyn.resources.get(api_version=api_version, kind=kind)
    except dynamic.exceptions.ResourceNotFoundError:
        raise KubeError(f"{what}: the API server does not know {api_version} {kind} (is the CRD installed?)") from None
    except HTTPError as e:  # discovery (re)reads the server's API list when its cache misses
        raise KubeError(f"{what}: cannot reach the Kubernetes API server: {e}") from None


def get(api_version: str, kind: str, name: str, namespace: str | None, client=None) -> dict[str, Any] | None:
    """The object as the API server has it now, or None when there is no such object (404)."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    what = f"{kind} {namespace or ''}/{name}"
    dyn = _dynamic(client, what)
    resource = _resource(dyn, api_version, kind, what)
    try:
        return dyn.get(resource, name=name, namespace=namespace).to_dict()
    except ApiException as e:  # the dynamic client's NotFoundError is an ApiException with status 404
        if e.status == 404:
            return None
        raise KubeError(f"{what}: read refused: {e.status} {e.reason}: {e.body}") from None
    except HTTPError as e:
        raise KubeError(f"{what}: cannot reach the Kubernetes API server: {e}") from None


def delete(api_version: str, kind: str, name: str, namespace: str | None, client=None,
           *, propagation_policy: str = "Background") -> bool:
    """Delete one object; True when it was there, False when it was already gone.

    ``propagation_policy``: Background lets the garbage collector remove what the object owns (a
    RayJob's RayCluster and submitter Job) after the call returns.
    """
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    what = f"{kind} {namespace or ''}/{name}"
    dyn = _dynamic(client, what)
    resource = _resource(dyn, api_version, kind, what)
    try:
        dyn.delete(resource, name=name, namespace=namespace,
                   body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation_policy})
    except ApiException as e:
        if e.status == 404:
            return False
        raise KubeError(f"{what}: delete refused: {e.status} {e.reason}: {e.body}") from None
    except HTTPError as e:
        raise KubeError(f"{what}: cannot reach the Kubernetes API server: {e}") from None
    return True


def create_event(obj: dict[str, Any], *, name: str, reason: str, message: str, type_: str = "Normal",
                 component: str = "lmops-operator", client=None) -> bool:
    """A core/v1 Event about ``obj``; ``name`` makes it idempotent (False when it already exists)."""
    import datetime as dt

    from kubernetes import client as k8s
    from kubernetes.client.exceptions import ApiException

    meta = obj["metadata"]
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = {"apiVersion": "v1", "kind": "Event", "metadata": {"name": name, "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta.get("uid")},
            "reason": reason, "message": message[:1024], "type": type_, "source": {"component": component},
            "firstTimestamp": now, "lastTimestamp": now, "count": 1, "reportingComponent": component}
    what = f"Event {meta['namespace']}/{name}"
    try:
        k8s.CoreV1Api(client or api_client()).create_namespaced_event(meta["namespace"], body)
    except ApiException as e:
        if e.status == 409:
            return False
        raise KubeError(f"{what}: create refused: {e.status} {e.reason}: {e.body}") from None
    return True
