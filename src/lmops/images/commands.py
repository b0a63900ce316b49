"""``lmops images build | base`` (``make images``, ``make base-image``)."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> None:
    sp = sub.add_parser("images", help="build the lmops container images (docker, else podman) or their base")
    sp.add_argument("action", choices=["build", "base"])
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
    done = [build.build(v, engine=engine, image=image, base=args.base, local_ca=not args.no_local_ca,
                        force=args.force, log=log) for v in (args.variant or ["cpu", "cuda"])]
    if not args.json:
        for b in done:
            print(b.line())
    return {"engine": engine.name, "images": [vars(b) for b in done]}
