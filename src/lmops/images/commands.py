"""``lmops images build | base | load`` (``make images``, ``make base-image``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub) -> None:
    sp = sub.add_parser("images", help="build the lmops container images (docker, else podman) or their base")
    sp.add_argument("action", choices=["build", "base", "load"],
                    help="build: the images (then load them when `lmops cluster` runs a node); base: the base image;"
                         " load: put the built image into the node's containerd (skipped when it has that image)")
    sp.add_argument("--variant", action="append", choices=["cpu", "cuda"],
                    help="build: which image (repeatable; default: cpu and cuda)")
    sp.add_argument("--repository", help="image repository (default: the config's image.repository, localhost/lmops)")
    sp.add_argument("--tag", help="tag base: <repository>:<tag>-cpu|-cuda (default: image.tag, the version)")
    sp.add_argument("--base", help="base image to build on (default: python:3.11-slim-bookworm when a registry"
                                   " answers, else a Debian base made here with mmdebstrap)")
    sp.add_argument("--no-local-ca", action="store_true",
                    help="build: do not pass this machine's added CAs (/usr/local/share/ca-certificates) to pip"
                         " in the build (they are used during the build only, never stored in the image)")
    sp.add_argument("--force", action="store_true", help="build even when an image with the same build key exists")
    sp.add_argument("--cluster-folder", help="load: the cluster's folder (default: <state>/cluster; $LMOPS_STATE_DIR)")
    sp.add_argument("--json", action="store_true", help="print the result as JSON")
    sp.set_defaults(fn=cmd_images)


def cmd_images(args: argparse.Namespace) -> dict:
    from lmops.config.image import ImageConfig
    from lmops.images import base, build
    from lmops.images.engine import detect

    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    engine = detect(install=True)
    if args.action == "base":
        ref = base.choose(engine, args.base, log=log) if args.base else base.ensure_local(engine, log=log)
        if not args.json:
            print(ref)
        return {"base": ref, "engine": engine.name}
    fields = {k: v for k, v in (("repository", args.repository), ("tag", args.tag)) if v}
    image = ImageConfig(**fields)
    variants = args.variant or (["cpu"] if args.action == "load" else ["cpu", "cuda"])
    done = [] if args.action == "load" else [
        build.build(v, engine=engine, image=image, base=args.base, local_ca=not args.no_local_ca,
                    force=args.force, log=log) for v in variants]
    loaded = _load_on_node(engine, [image.ref(v) for v in variants], args, required=args.action == "load", log=log)
    if not args.json:
        for line in [b.line() for b in done] + [x.line() for x in loaded]:
            print(line)
    return {"engine": engine.name, "images": [vars(b) for b in done], "loaded": [vars(x) for x in loaded]}


def _load_on_node(engine, refs: list[str], args: argparse.Namespace, required: bool, log) -> list:
    """Load into the node of `lmops cluster` (required: `images load`; else only when a node runs)."""
    from lmops.cluster import control_plane, node, node_images

    folder = Path(args.cluster_folder).resolve() if args.cluster_folder else control_plane.default_folder().resolve()
    if not required and not node.running(folder):
        return []
    return [node_images.load(folder, ref, engine, log=log) for ref in refs]
