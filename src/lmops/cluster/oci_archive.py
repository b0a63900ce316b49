"""A one-layer OCI image archive made from local files, for images no registry serves here.

The node's pod sandbox image (``pause``, built from the Kubernetes source tree) is the one user: no
registry is reachable from these machines, so ``k8s.gcr.io/pause`` cannot be pulled. The archive is what
``ctr images import`` reads (an ``oci-layout``, ``index.json`` and content-addressed blobs), named through
the ``io.containerd.image.name`` annotation.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"


def write(out: Path, image: str, files: dict[str, Path], entrypoint: list[str]) -> Path:
    """Write ``out`` (a tar) holding one image: ``files`` maps a path in the image to a file here, each
    made executable and owned by root. Deterministic: the same inputs give the same bytes."""
    layer = _tar({name.lstrip("/"): (src.read_bytes(), 0o755) for name, src in files.items()})
    layer_digest = _digest(layer)
    config = _json({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": entrypoint, "User": "65535:65535"},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    })
    manifest = _json({
        "schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": _digest(config), "size": len(config)},
        "layers": [{"mediaType": MEDIA_LAYER, "digest": layer_digest, "size": len(layer)}],
    })
    index = _json({
        "schemaVersion": 2,
        "manifests": [{"mediaType": MEDIA_MANIFEST, "digest": _digest(manifest), "size": len(manifest),
                       "platform": {"architecture": "amd64", "os": "linux"},
                       "annotations": {"io.containerd.image.name": image,
                                       "org.opencontainers.image.ref.name": image.rsplit(":", 1)[-1]}}],
    })
    entries = {"oci-layout": (_json({"imageLayoutVersion": "1.0.0"}), 0o644), "index.json": (index, 0o644)}
    for blob in (layer, config, manifest):
        entries[f"blobs/sha256/{_digest(blob).split(':', 1)[1]}"] = (blob, 0o644)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(_tar(entries))
    tmp.replace(out)
    return out


def _tar(entries: dict[str, tuple[bytes, int]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, (data, mode) in sorted(entries.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
