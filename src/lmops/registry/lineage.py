"""Lineage: the chain of stage manifests behind a model directory, as flat MLflow tags and back.

A model directory's manifest names its inputs by digest and path; following them gives
checkpoint -> tokens -> dataset -> raw sources (a compressed variant adds one link in front:
int8/pruned/student -> checkpoint). The digests always come from the *downstream* manifest's
``inputs``, which is what the stage actually consumed; the upstream directory at that path is only
read for its counts, and only when its content digest still matches (a path can be overwritten by a
later run — then its counts belong to other data and are not reported).

A version carries the chain twice: its digests as tags (``lmops.lineage.<role>.digest``, what people filter
on) and the whole chain as ``lineage.json`` in its source run. The document holds no machine's absolute path:
local paths are relative to the folder the stage outputs share (``storage``, a ``file://HOST/...`` URI), so
the record reads the same wherever it is read, and ``lmops lineage`` on that host still finds the folders.
Versions registered before lineage.json carry the whole chain as tags (``from_tags`` reads those).

No MLflow here: these functions turn manifests into tags and documents, and those into printable lines.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from lmops.manifest import Manifest, ManifestError, read_manifest

TAG = "lmops.lineage"
MODEL_DIGEST = f"{TAG}.model.digest"
"""Every version ``lmops register`` made has this tag; without it a version has no lineage to show."""
# stage name -> role in the chain; any other stage (quantize, prune, distill...) is the "variant" link
ROLES = {"train": "checkpoint", "tokenize": "tokens", "build": "dataset"}
LINEAGE_FILE = "lineage.json"
ORDER = ("variant", "checkpoint", "tokens", "dataset", "sources")
# inputs followed first when a stage has several (a student has a teacher checkpoint and tokens)
PREFERRED_INPUTS = ("checkpoint", "teacher", "model", "tokens", "dataset")


@dataclass
class Link:
    role: str
    digest: str
    path: str | None = None
    stage: str | None = None
    counts: dict[str, Any] = field(default_factory=dict)
    note: str | None = None
    """Why counts are missing (path gone, or now holding other content)."""


def chain_from_manifests(model_dir: Path, manifest: Manifest) -> list[Link]:
    """The lineage of a verified model directory, from itself down to the raw sources."""
    links = [Link(_role(manifest.stage, first=True), manifest.digest, str(model_dir), manifest.stage,
                  _key_counts(manifest))]
    current, seen = manifest, {manifest.digest}
    while True:
        name = _next_input(current)
        if name is None:
            break
        spec = current.inputs[name]
        if name == "sources" or "uris" in spec:  # the build stage's raw sources: the end of the chain
            files = spec.get("files", [])
            links.append(Link("sources", spec["digest"], ",".join(spec.get("uris", [])), None,
                              {"files": len(files), "bytes": sum(f.get("bytes") or 0 for f in files)}))
            break
        upstream, note = _upstream(spec)
        link = Link(_role(upstream.stage if upstream else None, fallback=name), spec["digest"], spec.get("path"),
                    upstream.stage if upstream else None, _key_counts(upstream) if upstream else {}, note)
        links.append(link)
        if upstream is None or upstream.digest in seen:
            break
        seen.add(upstream.digest)
        current = upstream
    return links


def _role(stage: str | None, first: bool = False, fallback: str = "variant") -> str:
    if stage in ROLES:
        return ROLES[stage]
    return "variant" if first else fallback


def _next_input(m: Manifest) -> str | None:
    """The input to follow: sources for a build, else the preferred named input, else any with a path."""
    if not m.inputs:
        return None
    for name in ("sources", *PREFERRED_INPUTS):
        if name in m.inputs:
            return name
    with_path = [n for n, spec in sorted(m.inputs.items()) if spec.get("path")]
    return with_path[0] if with_path else None


def _upstream(spec: dict[str, Any]) -> tuple[Manifest | None, str | None]:
    path = spec.get("path")
    if not path or "://" in path:
        return None, "not a local path: counts not read"
    try:
        m = read_manifest(path)
    except ManifestError:
        return None, "directory no longer present: counts not read"
    if m.digest != spec["digest"]:
        return None, f"{path} now holds other content (digest {m.digest[:12]}): counts not read"
    return m, None


def _key_counts(m: Manifest) -> dict[str, Any]:
    """The few counts worth printing per stage (the full counts stay in the manifest)."""
    c = m.counts
    if m.stage == "build":
        docs = c.get("documents", {})
        return {"documents_kept": docs.get("kept"), "documents_read": docs.get("read"),
                "splits": {s: v.get("docs") for s, v in c.get("splits", {}).items() if isinstance(v, dict)}}
    if m.stage == "tokenize":
        return {"vocab_size": c.get("vocab_size"), "tokens": c.get("tokens")}
    keep = ("steps", "tokens_seen", "params", "sparsity", "variant")
    return {k: c[k] for k in keep if k in c} or {k: v for k, v in c.items() if not isinstance(v, (dict, list))}


# ---------------------------------------------------------------- tags
def to_tags(links: list[Link]) -> dict[str, str]:
    """``lmops.lineage.<role>.digest|path|stage|counts``; the registered directory is ``model``."""
    tags: dict[str, str] = {}
    for i, link in enumerate(links):
        role = "model" if i == 0 else link.role
        base = f"{TAG}.{role}"
        tags[f"{base}.digest"] = link.digest
        if link.path:
            tags[f"{base}.path"] = link.path
        if link.stage:
            tags[f"{base}.stage"] = link.stage
        if link.counts:
            tags[f"{base}.counts"] = json.dumps(link.counts, sort_keys=True, separators=(",", ":"))
        if link.note:
            tags[f"{base}.note"] = link.note
    # the model directory is also its own role's link (a trained checkpoint is the checkpoint)
    first = links[0]
    if first.role != "variant":
        for key in ("digest", "path", "stage", "counts"):
            if f"{TAG}.model.{key}" in tags:
                tags[f"{TAG}.{first.role}.{key}"] = tags[f"{TAG}.model.{key}"]
    return tags


def from_tags(tags: dict[str, str]) -> list[Link]:
    """The chain back from a version's tags, model first, then checkpoint -> ... -> sources."""
    links = []
    for role in ("model", *ORDER):
        base = f"{TAG}.{role}"
        if f"{base}.digest" not in tags:
            continue
        if role != "model" and tags.get(f"{base}.digest") == tags.get(f"{TAG}.model.digest"):
            continue  # the model directory itself, already listed as "model"
        counts = json.loads(tags[f"{base}.counts"]) if f"{base}.counts" in tags else {}
        shown = _role(tags.get(f"{base}.stage"), first=True) if role == "model" else role
        links.append(Link(shown, tags[f"{base}.digest"], tags.get(f"{base}.path"), tags.get(f"{base}.stage"),
                          counts, tags.get(f"{base}.note")))
    return links


def format_counts(counts: dict[str, Any]) -> str:
    parts = []
    for k, v in counts.items():
        if isinstance(v, dict):
            v = ", ".join(f"{kk} {vv:,}" if isinstance(vv, int) else f"{kk} {vv}" for kk, vv in v.items())
            parts.append(f"{k}: {v}")
        elif v is not None:
            parts.append(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}")
    return "; ".join(parts)


# ---------------------------------------------------------------- lineage.json and the digest tags
def digest_tags(links: list[Link]) -> dict[str, str]:
    """Only the digests of ``to_tags`` (the rest of the chain lives in lineage.json)."""
    return {k: v for k, v in to_tags(links).items() if k.endswith(".digest")}


def to_document(links: list[Link], host: str | None = None) -> dict[str, Any]:
    """lineage.json: the chain, model first, with local paths relative to the folder they share."""
    host = host or socket.gethostname()
    local = [link.path for link in links if link.role != "sources" and _is_local(link.path)]
    root = os.path.commonpath(local) if local else None
    chain = []
    for link in links:
        entry = {k: v for k, v in vars(link).items() if v not in (None, {}, "")}
        if link.role == "sources" and link.path:
            entry["path"] = ",".join(_portable(p, root, host) for p in link.path.split(","))
        elif _is_local(link.path):
            entry["path"] = _portable(link.path, root, host)
        if link.note:
            entry["note"] = link.note.replace(link.path or "\0", entry.get("path", ""))
        chain.append(entry)
    return {"storage": f"file://{host}{root}" if root else None, "chain": chain}


def from_document(doc: dict[str, Any], host: str | None = None) -> list[Link]:
    """The chain of a lineage.json; paths under ``storage`` made local again when read on its host."""
    storage = doc.get("storage") or ""
    host = host or socket.gethostname()
    prefix = f"file://{host}/"
    root = storage[len(prefix) - 1:] if storage.startswith(prefix) else None
    links = []
    for entry in doc.get("chain", []):
        link = Link(**{k: entry.get(k) for k in ("role", "digest", "path", "stage", "note")},
                    counts=entry.get("counts") or {})
        if link.path:
            link.path = ",".join(_local(p, root, host) for p in link.path.split(","))
        links.append(link)
    return links


def _is_local(path: str | None) -> bool:
    return bool(path) and "://" not in path and os.path.isabs(path)


def _portable(path: str, root: str | None, host: str) -> str:
    """A path relative to the shared root when under it, a URI naming the host otherwise (URIs as they are)."""
    if not _is_local(path):
        return path
    if root and (path == root or path.startswith(root.rstrip("/") + "/")):
        return os.path.relpath(path, root)
    return f"file://{host}{path}"


def _local(path: str, root: str | None, host: str) -> str:
    """Back to a path this machine can open: relative ones under the root (on its host), file:// of this host."""
    if path.startswith(f"file://{host}/"):
        return path[len(f"file://{host}"):]
    if "://" in path or root is None:
        return path
    return str(PurePosixPath(root) / path)
