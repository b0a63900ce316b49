"""Kubernetes value checks shared by the sections that render pods (kuberay, deploy): the patterns the API
server itself uses, and tolerations / node selectors checked the way it checks them, so a typo fails when the
config loads rather than minutes later as an object the cluster refuses."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator

from lmops.errors import LmopsError

# the patterns Kubernetes itself uses (resource.Quantity, DNS-1123 label / subdomain, env var names)
QUANTITY = re.compile(r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)"
                      r"|(\.[0-9]+))))?$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
INT32_MAX = 2**31 - 1
TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}
TOLERATION_OPERATORS = {"Exists", "Equal"}
TOLERATION_EFFECTS = {"", "NoSchedule", "PreferNoSchedule", "NoExecute"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
"""GPU node pools are usually tainted so that only pods asking for GPUs land there."""


def gpu_tolerations() -> list[dict[str, Any]]:
    return [dict(GPU_TOLERATION)]


def pod_tolerations(configured: list[dict[str, Any]] | None, gpus: int) -> list[dict[str, Any]]:
    """A pod's tolerations: the configured ones, else the GPU taint's when the pod asks for GPUs (GPU node
    pools are usually tainted so that only such pods land there)."""
    if configured is not None:
        return [dict(t) for t in configured]
    return gpu_tolerations() if gpus else []


def quantity(v: Any) -> str:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        v = str(v)  # YAML reads `cpu: 8` as a number; Kubernetes wants the quantity "8"
    if not (isinstance(v, str) and QUANTITY.match(v)):
        raise ValueError("expected a Kubernetes quantity such as '8', '500m' or '32Gi'")
    return v


def cpu_cores(quantity: str, where: str) -> float:
    """A Kubernetes CPU quantity ("8", "500m", "1.5") in cores; ``where`` names the field in the error."""
    try:
        return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)
    except ValueError:
        raise LmopsError(f"{where}={quantity!r}: cannot read it as CPU cores (use e.g. '8' or '7500m')") from None


def check_tolerations(v: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for i, t in enumerate(v):
        unknown = sorted(set(t) - TOLERATION_KEYS)
        if unknown:
            raise ValueError(f"tolerations[{i}]: unknown key(s) {unknown} (allowed: {sorted(TOLERATION_KEYS)})")
        for key in ("key", "operator", "value", "effect"):
            if key in t and not isinstance(t[key], str):
                raise ValueError(f"tolerations[{i}].{key}: expected a string, got {t[key]!r}")
        if t.get("operator", "Equal") not in TOLERATION_OPERATORS:
            raise ValueError(f"tolerations[{i}].operator: expected Exists or Equal, got {t['operator']!r}")
        if t.get("effect", "") not in TOLERATION_EFFECTS:
            raise ValueError(f"tolerations[{i}].effect: expected NoSchedule, PreferNoSchedule or NoExecute,"
                             f" got {t['effect']!r}")
        seconds = t.get("tolerationSeconds")
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, int)):
            raise ValueError(f"tolerations[{i}].tolerationSeconds: expected an integer, got {seconds!r}")
        if t.get("operator") == "Exists" and t.get("value"):
            raise ValueError(f"tolerations[{i}]: operator Exists takes no value (got {t['value']!r})")
    return v


def check_node_selector(v: dict[str, str]) -> dict[str, str]:
    """Label keys ([prefix/]name) and values as the API server validates them."""
    name = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
    for key, value in v.items():
        prefix, _, label = key.rpartition("/")
        if not label or len(label) > 63 or not name.match(label) or (
                prefix and not (DNS_SUBDOMAIN.match(prefix) and len(prefix) <= 253)):
            raise ValueError(f"node_selector key {key!r} is not a label key ([prefix/]name)")
        if not isinstance(value, str) or len(value) > 63 or not name.match(value):
            raise ValueError(f"node_selector[{key!r}]: {value!r} is not a label value")
    return v


def check_env_names(v: dict[str, str]) -> dict[str, str]:
    bad = [k for k in v if not ENV_NAME.match(k)]
    if bad:
        raise ValueError(f"{bad} are not valid environment variable names")
    return v


NodeSelector = Annotated[dict[str, str], AfterValidator(check_node_selector)]
"""A pod's nodeSelector field in a config section, checked as the API server would."""
Tolerations = Annotated[list[dict[str, Any]] | None,
                        AfterValidator(lambda v: None if v is None else check_tolerations(v))]
"""A pod's tolerations in a config section (None = the section's default), checked as the API server would."""
