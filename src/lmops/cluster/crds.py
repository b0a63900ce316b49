"""The CRDs `lmops cluster up` installs: every YAML under manifests/crds/ -- the vendored upstream ones
(KServe's InferenceService, ServingRuntime, ClusterServingRuntime; KubeRay's RayJob, RayCluster) and
lmops' own as they are added.

The upstream files are large (the InferenceService CRD is 2 MB of YAML, seconds to parse), so each
is parsed once and kept as JSON in the cache, keyed by the file's digest.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from lmops.cluster.binaries import cache_root
from lmops.errors import LmopsError

CRD_DIR = Path(__file__).resolve().parents[3] / "manifests" / "crds"
API_VERSION, KIND = "apiextensions.k8s.io/v1", "CustomResourceDefinition"


def manifests(folder: Path = CRD_DIR) -> list[dict[str, Any]]:
    """Every CustomResourceDefinition in the YAML files under ``folder``, in file order."""
    out = []
    for path in sorted(folder.rglob("*.yaml")):
        out += [d for d in _load(path) if isinstance(d, dict) and d.get("kind") == KIND]
    return out


def _load(path: Path) -> list[Any]:
    import yaml

    data = path.read_bytes()
    cached = cache_root() / "crds" / f"{hashlib.sha256(data).hexdigest()[:16]}.json"
    try:
        return json.loads(cached.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        pass
    docs = list(yaml.load_all(data, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_name(f".{cached.name}.{time.time_ns()}")
    tmp.write_text(json.dumps(docs))
    tmp.replace(cached)
    return docs


def install(client, *, deadline: float, folder: Path = CRD_DIR) -> list[str]:
    """Server-side apply every CRD and wait until the API server serves each; returns their names."""
    from lmops import kube

    names, served = [], []
    for crd in manifests(folder):
        crd = for_1_20(crd)
        # create when new (a fresh folder, every test session): seconds faster than apply per large CRD;
        # apply (an update) only when it is there already
        if not kube.create(crd, client=client):
            kube.apply(crd, client=client)
        names.append(crd["metadata"]["name"])
        spec = crd["spec"]
        served += [(f"{spec['group']}/{v['name']}", spec["names"]["plural"], crd["metadata"]["name"])
                   for v in spec["versions"] if v.get("served", True)]
    for api_version, plural, name in served:
        while not kube.served(api_version, plural, client=client):
            if time.monotonic() > deadline:
                raise LmopsError(f"CRD {name} applied but {api_version} {plural} not served in time"
                                 f" (kubectl describe crd {name})")
            time.sleep(0.2)
    return names


def for_1_20(node: Any) -> Any:
    """The CRD as the 1.20 API server can take it, with what it cannot handle removed:

    - CEL rules (``x-kubernetes-validations``): 1.20 predates them; it drops them silently on create,
      and server-side apply refuses the unknown field outright. What they check is not checked on
      `lmops cluster` (STACK-NOTES: keep validation that matters to OpenAPI features, or check it in lmops).
    - empty-string defaults (``default: ""``, newer KubeRay CRDs on every ``name`` of a reference): 1.20
      reads them as null and refuses the CRD ("must be of type string"). Without them the field stays
      unset instead of "", which every reader treats alike; a list-map key among them becomes required.
    """
    if isinstance(node, dict):
        items = node.get("items")
        if node.get("x-kubernetes-list-map-keys") and isinstance(items, dict):
            # a list-map key needs a default or `required`: the key, then, is required
            props = items.get("properties") or {}
            empty = [k for k in node["x-kubernetes-list-map-keys"] if (props.get(k) or {}).get("default") == ""]
            if empty:
                node = {**node, "items": {**items, "required": sorted(set(items.get("required") or []) | set(empty))}}
        return {k: for_1_20(v) for k, v in node.items()
                if k != "x-kubernetes-validations" and not (k == "default" and v == "")}
    if isinstance(node, list):
        return [for_1_20(v) for v in node]
    return node
