"""The only module that talks to the Kubernetes API.

Writes are server-side apply (``application/apply-patch+yaml`` with a field manager), so applying
the same manifest twice is a no-op, and fields other managers own (KServe's status and defaults,
an operator's traffic edits) are left alone. Credentials come from the pod's service account when
running in a cluster, else from the kubeconfig (``KUBECONFIG`` / ~/.kube/config).

Every refusal becomes a KubeError a user can act on: the server unreachable (and where it was looked
for), a 403 naming the verb, resource and namespace and what Role must grant it (only for an RBAC denial:
a namespace being deleted is named as such), a missing namespace, a 404 of a custom kind naming the
operator that is missing, a 422 listing the server's field errors.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

from lmops.errors import LmopsError

FIELD_MANAGER = "lmops"
# The operator that brings each API group's CRDs: named when its kind is missing.
OPERATORS = {"serving.kserve.io": "KServe", "ray.io": "KubeRay", "lmops.dev": "the lmops operator (its CRDs)"}
MAX_CAUSES = 8  # field errors shown of a 422; a broken schema can have hundreds
WATCH_TIMEOUT_S = 60  # one watch request; the loop resumes from the last resourceVersion after it


class KubeError(LmopsError, RuntimeError):
    """The API server refused or could not be reached; the message names the object."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def api_client(kubeconfig: str | None = None):
    """An ApiClient: the given kubeconfig file; else the pod's service account; else KUBECONFIG."""
    from kubernetes import client, config

    if kubeconfig:
        try:
            return config.new_client_from_config(config_file=str(kubeconfig))
        except (config.ConfigException, FileNotFoundError) as e:
            raise KubeError(f"kubeconfig {kubeconfig}: {e}") from None
    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            # KUBECONFIG as it is now: the client library reads it only once, when first imported
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None)
        except (config.ConfigException, FileNotFoundError) as e:
            raise KubeError(f"no Kubernetes credentials (not in a cluster, no usable kubeconfig): {e}") from None
    return client.ApiClient()


def _describe(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata", {})
    return f"{obj.get('kind')} {meta.get('namespace', '')}/{meta.get('name')}"


# ---------------------------------------------------------------- errors a user can act on
def _unreachable(client, what: str, e: Exception) -> KubeError:
    host = getattr(getattr(client, "configuration", None), "host", "?")
    return KubeError(f"{what}: cannot reach the Kubernetes API server at {host}: {e} (is it running? for the"
                     f" local one: lmops cluster status)")


def _refused(e, verb: str, what: str, resource=None, namespace: str | None = None) -> KubeError:
    """A KubeError from an ApiException, worded by status."""
    body = _body(e)
    message = body.get("message") or e.reason or ""
    plural = getattr(resource, "name", None) or "?"
    group = getattr(resource, "group", "") or ""
    reasons = {c.get("reason") for c in (body.get("details") or {}).get("causes") or []}
    if e.status == 403 and "NamespaceTerminating" in reasons:
        return KubeError(f"{what}: namespace {namespace} is being deleted (Terminating), so nothing new can be"
                         f" created in it; wait until it is gone. If it stays Terminating, an object in it has a"
                         f" finalizer nobody removes (an operator that is not running): `kubectl get"
                         f" lmtrainingjobs,modeldeployments -n {namespace}`, then start the operator for that"
                         f" namespace or remove the finalizer ({message})", 403)
    if e.status == 404 and (body.get("details") or {}).get("kind") == "namespaces":
        return KubeError(f"{what}: namespace {namespace} does not exist (create it: kubectl create namespace"
                         f" {namespace}) ({message})", 404)
    if e.status == 403:
        where = f"in namespace {namespace}" if namespace else "cluster-wide"
        kind = "Role" if namespace else "ClusterRole"
        return KubeError(f"{what}: forbidden to {verb} {plural}{'.' + group if group else ''} {where} ({message})."
                         f" A {kind} bound to this identity must grant verbs [{verb}] on resources [{plural}] in"
                         f" apiGroups [\"{group}\"]", 403)
    if e.status == 422:
        causes = (body.get("details") or {}).get("causes") or []
        fields = "; ".join(f"{c.get('field', '?')}: {c.get('message', c.get('reason', ''))}" for c in causes[:MAX_CAUSES])
        more = f"; and {len(causes) - MAX_CAUSES} more" if len(causes) > MAX_CAUSES else ""
        return KubeError(f"{what}: the API server refused it as invalid: {fields or message}{more}", 422)
    return KubeError(f"{what}: {verb} refused: {e.status} {e.reason}: {message}", e.status)


def _body(e) -> dict[str, Any]:
    try:
        body = json.loads(e.body or "{}")
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def _missing_kind(api_version: str, kind: str, what: str) -> KubeError:
    group = api_version.split("/")[0] if "/" in api_version else ""
    operator = OPERATORS.get(group)
    hint = f"is {operator} installed?" if operator else "is its CRD installed?"
    return KubeError(f"{what}: no kind {kind} ({api_version}) on this API server: {hint}", 404)


def _dynamic(client, what: str):
    """A dynamic client and its discovery; an unreachable API server is a KubeError naming the object."""
    from kubernetes import dynamic
    from urllib3.exceptions import HTTPError

    client = client or api_client()
    try:
        return dynamic.DynamicClient(client)
    except HTTPError as e:
        raise _unreachable(client, what, e) from None


def _resource(dyn, api_version: str, kind: str, what: str):
    from kubernetes import dynamic
    from urllib3.exceptions import HTTPError

    try:
        return dyn.resources.get(api_version=api_version, kind=kind)
    except dynamic.exceptions.ResourceNotFoundError:
        raise _missing_kind(api_version, kind, what) from None
    except HTTPError as e:  # discovery (re)reads the server's API list when its cache misses
        raise _unreachable(dyn.client, what, e) from None


def _call(dyn, verb: str, what: str, resource, scope: str | None, fn, /, *args, **kwargs):
    """Run one API call; ApiException and connection errors become KubeErrors (404 passes through)."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        return fn(*args, **kwargs)
    except ApiException as e:  # the dynamic client's NotFoundError etc. are ApiExceptions
        if e.status == 404:
            raise
        raise _refused(e, verb, what, resource, scope) from None
    except HTTPError as e:
        raise _unreachable(dyn.client, what, e) from None


# ---------------------------------------------------------------- reads and writes
def apply(obj: dict[str, Any], *, field_manager: str = FIELD_MANAGER, force: bool = True, client=None) -> dict[str, Any]:
    """Server-side apply one object; returns the object as the API server stored it.

    ``force``: take ownership of fields another manager set (lmops is the source of truth for
    the fields it renders).
    """
    from kubernetes.client.exceptions import ApiException

    what = _describe(obj)
    dyn = _dynamic(client, what)
    resource = _resource(dyn, obj["apiVersion"], obj["kind"], what)
    ns = obj.get("metadata", {}).get("namespace") if resource.namespaced else None
    try:
        out = _call(dyn, "patch", what, resource, ns, dyn.server_side_apply, resource, body=obj, namespace=ns,
                    field_manager=field_manager, force_conflicts=force)
    except ApiException as e:  # 404 on apply: the namespace is missing
        raise _refused(e, "patch", what, resource, ns) from None
    return out.to_dict()


def create(obj: dict[str, Any], *, field_manager: str = FIELD_MANAGER, client=None) -> bool:
    """Create one object; False when it exists already (then nothing is changed). Cheaper than apply for
    very large objects (the 2 MB CRDs): the server does no field-by-field merge."""
    from kubernetes.client.exceptions import ApiException

    what = _describe(obj)
    dyn = _dynamic(client, what)
    resource = _resource(dyn, obj["apiVersion"], obj["kind"], what)
    ns = obj.get("metadata", {}).get("namespace") if resource.namespaced else None
    try:
        # the response (the whole object again) is not read: wrapping megabytes costs seconds
        _call(dyn, "create", what, resource, ns, dyn.request, "post", resource.path(namespace=ns), body=obj,
              field_manager=field_manager, _preload_content=False)
    except KubeError as e:
        if e.status == 409:
            return False
        raise
    except ApiException as e:  # 404: the namespace is missing
        raise _refused(e, "create", what, resource, ns) from None
    return True


def get(api_version: str, kind: str, name: str, namespace: str | None, client=None) -> dict[str, Any] | None:
    """The object as the API server has it now, or None when there is no such object (404)."""
    from kubernetes.client.exceptions import ApiException

    what = f"{kind} {namespace or ''}/{name}"
    dyn = _dynamic(client, what)
    resource = _resource(dyn, api_version, kind, what)
    try:
        return _call(dyn, "get", what, resource, namespace, dyn.get, resource, name=name, namespace=namespace).to_dict()
    except ApiException:  # 404
        return None


def served(api_version: str, plural: str, client=None) -> bool:
    """True when the API server serves ``plural`` in ``api_version``: its discovery lists it (the group's small
    discovery document, not the CRD itself, megabytes) and a list of it answers. A new CRD shows in discovery
    a moment before its handler serves it: a list then is a 404."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    client = client or api_client()
    what = f"discovery of {api_version}"
    try:
        resp = client.call_api(f"/apis/{api_version}", "GET", auth_settings=["BearerToken"], _preload_content=False,
                               _return_http_data_only=True)
        if not any(r.get("name") == plural for r in json.loads(resp.data).get("resources") or []):
            return False
        what = f"a list of {plural} ({api_version})"
        client.call_api(f"/apis/{api_version}/{plural}", "GET", query_params=[("limit", 1)],
                        auth_settings=["BearerToken"], _preload_content=False, _return_http_data_only=True)
    except ApiException as e:
        if e.status == 404:
            return False
        raise _refused(e, "get", what) from None
    except HTTPError as e:
        raise _unreachable(client, what, e) from None
    return True


def list_objects(api_version: str, kind: str, namespace: str | None = None, client=None,
                 *, label_selector: str | None = None) -> tuple[list[dict[str, Any]], str]:
    """(objects, the list's resourceVersion) of one kind, in one namespace or all; ``label_selector`` as
    kubectl's ``-l``."""
    from kubernetes.client.exceptions import ApiException

    what = f"{kind} list in {namespace or 'all namespaces'}"
    dyn = _dynamic(client, what)
    resource = _resource(dyn, api_version, kind, what)
    selector = {"label_selector": label_selector} if label_selector else {}
    try:
        out = _call(dyn, "list", what, resource, namespace, dyn.get, resource, namespace=namespace, **selector)
    except ApiException as e:  # 404 on a list: discovery names the kind, but the API server does not serve it
        raise KubeError(f"{what}: the API server does not serve {kind} ({api_version}) yet: a CRD just created"
                        f" is served once it is Established ({_body(e).get('message') or e.reason})", 404) from None
    out = out.to_dict()
    return out.get("items") or [], out["metadata"]["resourceVersion"]


def delete(api_version: str, kind: str, name: str, namespace: str | None, client=None,
           *, propagation_policy: str = "Background", grace_period_s: int | None = None) -> bool:
    """Delete one object; True when it was there, False when it was already gone.

    ``propagation_policy``: Background lets the garbage collector remove what the object owns (a
    RayJob's RayCluster and submitter Job) after the call returns. ``grace_period_s``: a pod's termination
    grace (0: its containers are killed at once, as a node failure would).
    """
    from kubernetes.client.exceptions import ApiException

    what = f"{kind} {namespace or ''}/{name}"
    dyn = _dynamic(client, what)
    resource = _resource(dyn, api_version, kind, what)
    try:
        _call(dyn, "delete", what, resource, namespace, dyn.delete, resource, name=name, namespace=namespace,
              body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation_policy,
                    **({"gracePeriodSeconds": grace_period_s} if grace_period_s is not None else {})})
    except ApiException:  # 404
        return False
    return True


def patch_status(api_version: str, kind: str, name: str, namespace: str | None, status: dict[str, Any],
                 client=None) -> dict[str, Any] | None:
    """Merge ``status`` into the object's status subresource (what a controller writes); None when the
    object is gone. Keys set to None are removed."""
    from kubernetes.client.exceptions import ApiException

    what = f"{kind} {namespace or ''}/{name} status"
    dyn = _dynamic(client, what)
    resource = _resource(dyn, api_version, kind, what)
    try:
        return _call(dyn, "patch", what, resource.subresources["status"], namespace, dyn.patch,
                     resource.subresources["status"], body={"status": status}, name=name, namespace=namespace,
                     content_type="application/merge-patch+json").to_dict()
    except ApiException:  # 404
        return None


def remove_finalizers(api_version: str, kind: str, name: str, namespace: str | None, prefix: str = "lmops.dev/",
                      client=None) -> bool:
    """Drop the finalizers starting with ``prefix`` (lmops' own) from one object, leaving others' alone --
    for objects whose operator is gone for good (uninstalled), which would otherwise never be deleted.
    False when the object is gone or held none."""
    obj = get(api_version, kind, name, namespace, client=client)
    finalizers = (obj or {}).get("metadata", {}).get("finalizers") or []
    keep = [f for f in finalizers if not f.startswith(prefix)]
    if obj is None or keep == finalizers:
        return False
    return _set_finalizers(obj, keep, client)


def add_finalizer(obj: dict[str, Any], finalizer: str, client=None) -> bool:
    """Add ``finalizer`` to the object as read (a controller's AddFinalizer + Update); False when it is there
    already or the object is gone."""
    finalizers = obj["metadata"].get("finalizers") or []
    return finalizer not in finalizers and _set_finalizers(obj, [*finalizers, finalizer], client)


def _set_finalizers(obj: dict[str, Any], finalizers: list[str], client) -> bool:
    """The patch carries the resourceVersion read: a concurrent change makes it fail (409) rather than drop or
    overwrite someone else's finalizer. False when the object is gone."""
    from kubernetes.client.exceptions import ApiException

    meta = obj["metadata"]
    api_version, kind, name, namespace = obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace")
    what = f"{kind} {namespace or ''}/{name} finalizers"
    dyn = _dynamic(client, what)
    resource = _resource(dyn, api_version, kind, what)
    body = {"metadata": {"finalizers": finalizers, "resourceVersion": meta["resourceVersion"]}}
    try:
        _call(dyn, "patch", what, resource, namespace, dyn.patch, resource, body=body, name=name,
              namespace=namespace, content_type="application/merge-patch+json")
    except ApiException:  # 404
        return False
    return True


# ---------------------------------------------------------------- watching
class Watch:
    """Iterate ``(type, object)`` for one kind, for ever: ADDED for what exists at the start, then the
    server's ADDED / MODIFIED / DELETED events.

    Resumes where it left off when a watch request ends (each lasts ``request_timeout_s``), and when
    the server says the resourceVersion has expired (410 Gone: the watch cache moved past it) lists
    again -- objects that vanished meanwhile come as DELETED, the rest as MODIFIED -- and watches
    from the new list. ``relists`` counts those recoveries.
    """

    def __init__(self, api_version: str, kind: str, namespace: str | None = None, *, client=None,
                 resource_version: str | None = None, request_timeout_s: int = WATCH_TIMEOUT_S):
        self.api_version, self.kind, self.namespace = api_version, kind, namespace
        self.client = client or api_client()
        self.resource_version = resource_version
        self.request_timeout_s = request_timeout_s
        self.relists = 0
        self._known: dict[tuple[str, str], dict[str, Any]] = {}

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any]]]:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        what = f"watch of {self.kind} in {self.namespace or 'all namespaces'}"
        dyn = _dynamic(self.client, what)
        resource = _resource(dyn, self.api_version, self.kind, what)
        if self.resource_version is None:
            yield from self._relist(initial=True)
        while True:
            try:
                stream = watch.Watch().stream(dyn.get, resource, namespace=self.namespace, serialize=False,
                                              resource_version=self.resource_version, allow_watch_bookmarks=True,
                                              timeout_seconds=self.request_timeout_s)
                for event in stream:
                    obj = event["raw_object"]
                    self.resource_version = obj["metadata"]["resourceVersion"]
                    if event["type"] == "BOOKMARK":
                        continue
                    key = _key(obj)
                    if event["type"] == "DELETED":
                        self._known.pop(key, None)
                    else:
                        self._known[key] = obj
                    yield event["type"], obj
            except ApiException as e:
                if e.status != 410:
                    raise _refused(e, "watch", what, resource, self.namespace) from None
                self.relists += 1
                yield from self._relist(initial=False)
            except HTTPError as e:
                raise _unreachable(self.client, what, e) from None

    def _relist(self, initial: bool) -> Iterator[tuple[str, dict[str, Any]]]:
        items, self.resource_version = list_objects(self.api_version, self.kind, self.namespace, client=self.client)
        for item in items:
            item.setdefault("apiVersion", self.api_version)
            item.setdefault("kind", self.kind)
        now = {_key(o): o for o in items}
        for key in set(self._known) - set(now):
            yield "DELETED", self._known.pop(key)
        for key, obj in now.items():
            yield ("ADDED" if initial or key not in self._known else "MODIFIED"), obj
            self._known[key] = obj


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return meta.get("namespace") or "", meta["name"]


def wait_for(api_version: str, kind: str, name: str, namespace: str | None, predicate, *, timeout_s: float,
             poll_s: float = 0.2, client=None) -> dict[str, Any] | None:
    """Poll until ``predicate(object or None)`` is true; returns that object (None: it is gone)."""
    deadline = time.monotonic() + timeout_s
    while True:
        obj = get(api_version, kind, name, namespace, client=client)
        if predicate(obj):
            return obj
        if time.monotonic() > deadline:
            raise KubeError(f"{kind} {namespace or ''}/{name}: condition not reached in {timeout_s:.0f}s")
        time.sleep(poll_s)


def create_event(obj: dict[str, Any], *, name: str, reason: str, message: str, type_: str = "Normal",
                 component: str = "lmops-operator", client=None) -> bool:
    """A core/v1 Event about ``obj``; ``name`` makes it idempotent (False when it already exists)."""
    import datetime as dt

    from kubernetes import client as k8s
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

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
        raise KubeError(f"{what}: create refused: {e.status} {_body(e).get('message') or e.reason}", e.status) from None
    except HTTPError as e:
        raise _unreachable(client, what, e) from None
    return True
