"""Images on the node: ``lmops images load`` puts an image built with podman or docker into the node's
containerd, as a registry pull would on a real cluster (no registry is reachable here).

The engine saves an OCI archive, ``ctr images import`` unpacks it into containerd's ``k8s.io`` namespace
(the kubelet's). The engine's image ID is kept as a containerd label, so a load of an image the node
already has is skipped (measured on these machines: save 38 s, import 41 s for the 3 GB image).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lmops.cluster import node
from lmops.cluster.supervise import ClusterError

ID_LABEL = "dev.lmops.engine-image-id"


@dataclass
class Loaded:
    ref: str
    image_id: str
    skipped: bool
    seconds: float

    def line(self) -> str:
        how = "already on the node" if self.skipped else f"loaded in {self.seconds:.0f}s"
        return f"{self.ref}: {how} (image {self.image_id[:19]})"


def node_image_id(folder: Path, ref: str) -> str | None:
    """The engine image ID this ref was loaded from, when the node has it (None otherwise)."""
    out = node.ctr(node.socket_path(folder), "images", "ls", f"name=={ref}", check=False)
    for line in out.stdout.splitlines()[1:]:
        cols = line.split()
        if cols and cols[0] == ref:
            labels = dict(kv.split("=", 1) for kv in cols[-1].split(",") if "=" in kv)
            return labels.get(ID_LABEL, "")
    return None


def load(folder: Path, ref: str, engine, log: Callable[[str], None] = print) -> Loaded:
    """Put ``ref`` (an image of ``engine``) into the node's containerd unless it holds that image ID."""
    sock = node.socket_path(folder)
    if not sock.exists():
        raise ClusterError(f"no node is running under {folder}: start one with `lmops cluster up`")
    if not engine.image_exists(ref):
        raise ClusterError(f"image {ref} not found in {engine.name}: build it first with `make images`")
    image_id = engine.run("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip()
    if node_image_id(folder, ref) == image_id:
        return Loaded(ref, image_id, True, 0.0)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(dir=node.node_dir(folder)) as tmp:
        archive = Path(tmp) / "image.oci.tar"
        log(f"[images] saving {ref} from {engine.name} as an OCI archive")
        engine.run("save", "--format", "oci-archive", "-o", str(archive), ref, timeout=1800)
        log(f"[images] importing {ref} into the node's containerd ({archive.stat().st_size / 2**30:.2f} GiB archive)")
        # the archive's ref annotation carries the full name (podman and docker), which ctr gives the image
        node.ctr(sock, "images", "import", str(archive), timeout=1800)
    if node_image_id(folder, ref) is None:
        raise ClusterError(f"ctr imported {archive.name} but the node has no image named {ref}")
    node.ctr(sock, "images", "label", ref, f"{ID_LABEL}={image_id}")
    return Loaded(ref, image_id, False, time.monotonic() - t0)
