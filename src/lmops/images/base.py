"""The base image the lmops image is built on.

``python:3.11-slim-bookworm`` from Docker Hub when a registry answers; where none is reachable (these
machines), a Debian bookworm base made from Debian's own packages with mmdebstrap and imported into the
engine (``make base-image``). Bookworm's python3 is 3.11, the lock's Python. The imported image is tagged
with a digest of its recipe, so a second build finds it and a changed recipe makes a new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from lmops.images.engine import Engine, EngineError, install_podman

REGISTRY_BASE = "docker.io/library/python:3.11-slim-bookworm"
REGISTRY_PROBE = "https://registry-1.docker.io/v2/"
LOCAL_REPOSITORY = "localhost/lmops-base"

SUITE = "bookworm"
# python3-venv: the image's venv (bookworm's python is "externally managed", PEP 668); tini: the init;
# wget: KubeRay before 1.6 injects `wget` exec probes into Ray pods
PACKAGES = ("python3", "python3-venv", "ca-certificates", "tini", "wget")
MIRROR = os.environ.get("LMOPS_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SECURITY_MIRROR = os.environ.get("LMOPS_DEBIAN_SECURITY_MIRROR", "http://deb.debian.org/debian-security")


def registry_reachable(timeout: float = 3.0) -> bool:
    """Does Docker Hub's registry answer at all (any HTTP status, 401 included)? A short timeout: on a
    machine without egress the answer is "no" in seconds, not after a pull's long retries."""
    try:
        urllib.request.urlopen(REGISTRY_PROBE, timeout=timeout)  # noqa: S310 (a fixed https URL)
        return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError, TimeoutError):
        return False


def recipe() -> dict:
    """Everything the mmdebstrap base is made from; its digest tags the image."""
    return {"suite": SUITE, "variant": "minbase", "packages": list(PACKAGES),
            "sources": sources(), "format": 1}


def sources() -> list[str]:
    return [f"deb {MIRROR} {SUITE} main", f"deb {MIRROR} {SUITE}-updates main",
            f"deb {SECURITY_MIRROR} {SUITE}-security main"]


def local_ref() -> str:
    digest = hashlib.sha256(json.dumps(recipe(), sort_keys=True).encode()).hexdigest()[:12]
    return f"{LOCAL_REPOSITORY}:{SUITE}-{digest}"


def choose(engine: Engine, base: str | None = None, log=print) -> str:
    """The base image to build on: ``base`` when given (e.g. your registry's python image), the registry's
    python image when a registry answers, else the local Debian base (made now when missing)."""
    if base:
        return base
    if registry_reachable():
        return REGISTRY_BASE
    log(f"[images] no container registry reachable: building on a Debian {SUITE} base made with mmdebstrap")
    return ensure_local(engine, log=log)


def ensure_local(engine: Engine, log=print) -> str:
    """The mmdebstrap base, made and imported when the engine does not have it yet (30-60 s)."""
    ref = local_ref()
    if engine.image_exists(ref):
        log(f"[images] base {ref} (cached)")
        return ref
    if subprocess.run(["sh", "-c", "command -v mmdebstrap"], capture_output=True).returncode != 0:
        install_podman(("mmdebstrap",))
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="lmops-base-") as tmp:
        tar = Path(tmp) / "base.tar"
        cmd = ["mmdebstrap", "--variant=minbase", "--mode=root", "--include=" + ",".join(PACKAGES),
               # the archive's Release files on these mirrors (snapshots) are older than their Valid-Until
               "--aptopt=Acquire::Check-Valid-Until \"false\"", SUITE, str(tar), *sources()]
        log(f"[images] mmdebstrap {SUITE} ({', '.join(PACKAGES)})")
        proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise EngineError(f"making the Debian base failed (mmdebstrap, exit {proc.returncode}): "
                              f"{proc.stderr.strip()[-800:]}")
        engine.run("import", "--change", 'CMD ["/bin/bash"]', str(tar), ref)
    log(f"[images] base {ref} made in {time.time() - started:.0f}s")
    return ref
