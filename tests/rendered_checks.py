"""One check for every workload lmops renders (InferenceService, RayJob, the operator's Deployment):

- the full vendored upstream CRD schema (manifests/crds/upstream), strictly: unknown fields refused, and
  list-map keys unique (a container's env naming a variable twice) -- lmops.cluster.crd_schema;
- each pod it describes as a core/v1 Pod, with kubernetes-validate --strict against Kubernetes 1.30 and the
  newest schemas it ships;
- each pod against the Pod Security Standards "restricted" profile plus a read-only root filesystem
  (lmops.security.restricted).
"""

from __future__ import annotations

from typing import Any

import kubernetes_validate

from lmops.cluster import crd_schema
from lmops.security.restricted import pod_specs, violations

K8S_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]


def rendered_problems(manifest: dict[str, Any]) -> list[str]:
    """Every problem of ``manifest``; empty means the API server and a restricted namespace would take it."""
    out: list[str] = []
    if "." in manifest["apiVersion"].split("/")[0]:  # a custom resource: its CRD's schema
        out += [f"CRD schema: {p}" for p in crd_schema.problems(manifest)]
    else:
        out += _k8s_problems(manifest)
    for where, pod in pod_specs(manifest):
        out += [f"{where}: {p}" for p in _k8s_problems({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                                                         "spec": pod})]
        out += [f"{where}: restricted: {p}" for p in violations(pod)]
    return out


def assert_valid(manifest: dict[str, Any]) -> None:
    problems = rendered_problems(manifest)
    assert not problems, "\n".join(problems)


def _k8s_problems(doc: dict[str, Any]) -> list[str]:
    out = []
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            out.append(f"kubernetes {version}: {e.message} at {'.'.join(map(str, e.path))}")
    return out
