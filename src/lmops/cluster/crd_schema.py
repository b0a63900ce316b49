"""Check a custom resource against the full vendored upstream CRD schema, offline, the way the API server
would with strict field validation (``kubectl apply --validate=strict``).

The CRD's openAPIV3Schema becomes a JSON Schema (draft 2020-12) with the Kubernetes extensions turned into what
they mean: ``x-kubernetes-int-or-string`` (an integer or a string), ``nullable``, and, for strictness, unknown
fields refused wherever the schema lists properties and does not preserve unknown fields (the API server would
prune them silently, or refuse them in strict mode). List-map keys are checked separately, as the API server
does: a list marked ``x-kubernetes-list-type: map`` may not hold two items with the same
``x-kubernetes-list-map-keys`` (a container's ``env`` named twice), a ``set`` no repeated item.
CEL rules (``x-kubernetes-validations``) are not evaluated.
"""

from __future__ import annotations

import functools
from typing import Any

from lmops.cluster.crds import manifests

DROPPED = {"description", "format", "nullable", "default", "example", "externalDocs"}


@functools.lru_cache(maxsize=None)
def _schemas() -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for crd in manifests():
        spec = crd["spec"]
        for version in spec["versions"]:
            out[(f"{spec['group']}/{version['name']}", spec["names"]["kind"])] = version["schema"]["openAPIV3Schema"]
    return out


def crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    try:
        return _schemas()[(api_version, kind)]
    except KeyError:
        raise KeyError(f"no vendored CRD serves {api_version} {kind} (manifests/crds/)") from None


@functools.lru_cache(maxsize=None)
def _validator(api_version: str, kind: str):
    import jsonschema

    return jsonschema.Draft202012Validator(json_schema(crd_schema(api_version, kind)))


def problems(manifest: dict[str, Any]) -> list[str]:
    """Every way ``manifest`` breaks its CRD's schema (strict) or a list-map / set key; empty = valid."""
    api_version, kind = manifest["apiVersion"], manifest["kind"]
    schema = crd_schema(api_version, kind)
    out = [f"{_path(e.absolute_path)}: {e.message}" for e in _validator(api_version, kind).iter_errors(manifest)]
    out += list_key_problems(schema, manifest)
    return out


def json_schema(node: Any) -> Any:
    """An openAPIV3Schema node as a strict JSON Schema."""
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in DROPPED or key.startswith("x-kubernetes-"):
            continue
        if key in ("properties", "patternProperties"):
            out[key] = {name: json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not"):
            out[key] = json_schema(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [json_schema(sub) for sub in value]
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    elif node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if (node.get("type") == "object" and "properties" in node and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def list_key_problems(schema: dict[str, Any], value: Any, path: tuple = ()) -> list[str]:
    """Duplicate keys in list-maps and repeated items in sets, anywhere under ``value``."""
    out: list[str] = []
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key, sub in value.items():
            sub_schema = props.get(key) or (extra if isinstance(extra, dict) else None)
            if sub_schema:
                out += list_key_problems(sub_schema, sub, path + (key,))
    elif isinstance(value, list):
        kind = schema.get("x-kubernetes-list-type")
        if kind == "map":
            keys = schema.get("x-kubernetes-list-map-keys") or []
            seen: dict[tuple, int] = {}
            for i, item in enumerate(value):
                ident = tuple(item.get(k) for k in keys) if isinstance(item, dict) else (item,)
                if ident in seen:
                    named = ", ".join(f"{k}={v!r}" for k, v in zip(keys, ident))
                    out.append(f"{_path(path + (i,))}: duplicate entry ({named}; also at [{seen[ident]}]): the list is"
                               f" keyed by {keys}")
                seen.setdefault(ident, i)
        elif kind == "set":
            for i, item in enumerate(value):
                if item in value[:i]:
                    out.append(f"{_path(path + (i,))}: duplicate item {item!r} in a set")
        item_schema = schema.get("items")
        if isinstance(item_schema, dict):
            for i, item in enumerate(value):
                out += list_key_problems(item_schema, item, path + (i,))
    return out


def _path(parts) -> str:
    text = ""
    for p in parts:
        text += f"[{p}]" if isinstance(p, int) else (f".{p}" if text else str(p))
    return text or "<root>"
