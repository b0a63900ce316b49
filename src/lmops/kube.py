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
