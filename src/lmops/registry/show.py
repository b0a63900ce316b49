"""``lmops lineage``: a registered version's chain, read from its source run's ``lineage.json`` (versions
registered before that: from its tags), checked against what is on disk."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from lmops.manifest import ManifestError, read_manifest
from lmops.registry import lineage
from lmops.registry.server import connect, model_ref, refused, resolve
from lmops.registry.tracking import RegistryError


def describe_lineage(model: str, version: str | None = None, *, tracking_uri: str | None = None) -> dict[str, Any]:
    """The version behind ``NAME VERSION``, ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` and its lineage
    links, model first."""
    ref = model_ref(model, version)
    server, client = connect(tracking_uri)
    mv = resolve(client, server, ref)
    tags = mv.tags or {}
    if lineage.MODEL_DIGEST not in tags:
        # a version registered by hand (or by another tool) has no chain: say so instead of printing Nones
        where = str(ref) if ref.version else f"{ref} (version {mv.version})"
        raise RegistryError(f"{where}: no lineage tags on this model version ({lineage.MODEL_DIGEST} and the other"
                            f" {lineage.TAG}.* tags are missing; `lmops register` writes them)")
    links = _chain(client, server, mv, where=f"{ref} (version {mv.version})")
    return {
        "uri": str(ref), "server": server, "name": ref.name, "version": mv.version,
        "variant": tags.get("lmops.variant"), "run_id": mv.run_id, "gate_passed": tags.get("lmops.gate.passed"),
        "code_version": tags.get("lmops.code_version"), "config_digest": tags.get("lmops.config_digest"),
        "pipeline_run_id": tags.get("lmops.pipeline_run_id"),
        "chain": [{**vars(link), "on_disk": on_disk(link)} for link in links],
    }


def _chain(client, server: str, mv, where: str) -> list[lineage.Link]:
    tags = mv.tags or {}
    if f"{lineage.TAG}.model.stage" in tags:  # registered before lineage.json: the whole chain is in the tags
        return lineage.from_tags(tags)
    import mlflow.artifacts

    with refused(f"{where}: reading {lineage.LINEAGE_FILE} of its run {mv.run_id}", server), \
            tempfile.TemporaryDirectory(prefix="lmops-lineage-") as tmp:
        path = mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path=lineage.LINEAGE_FILE,
                                                   dst_path=tmp, tracking_uri=server)
        doc = json.loads(Path(path).read_text())
    links = lineage.from_document(doc)
    if not links or links[0].digest != tags.get(lineage.MODEL_DIGEST):
        raise RegistryError(f"{where}: {lineage.LINEAGE_FILE} of run {mv.run_id} is not this version's lineage"
                            f" (it starts at {links[0].digest[:12] if links else 'nothing'}, the version's model is"
                            f" {tags.get(lineage.MODEL_DIGEST, '?')[:12]})")
    return links


def on_disk(link: lineage.Link) -> str:
    """Whether the recorded path still holds the recorded content (lineage outlives directories)."""
    if link.role == "sources" or not link.path or "://" in link.path:
        return "not checked"
    if not Path(link.path).is_absolute():
        return "not checked (recorded on another machine)"
    try:
        m = read_manifest(link.path)
    except ManifestError:
        return "missing"
    return "present" if m.digest == link.digest else f"changed (now {m.digest[:12]})"


def lineage_lines(info: dict[str, Any]) -> list[str]:
    head = (f"{info['uri']} -> version {info['version']} (variant {info['variant']}, gates "
            f"{'passed' if info['gate_passed'] == 'true' else 'NOT passed'}, code {info['code_version']},"
            f" run {info['run_id']})")
    lines = [head]
    for i, link in enumerate(info["chain"]):
        arrow = "  " + ("   " * i) + "└─ "
        where = f" {link['path']}" if link.get("path") else ""
        stage = f" [{link['stage']}]" if link.get("stage") and link["stage"] != link["role"] else ""
        lines.append(f"{arrow}{link['role']}{stage}: {link['digest'][:16]}{where} ({link['on_disk']})")
        detail = lineage.format_counts(link.get("counts") or {})
        if detail:
            lines.append(f"{'  ' + '   ' * i}   {detail}")
        if link.get("note"):
            lines.append(f"{'  ' + '   ' * i}   note: {link['note']}")
    return lines
