"""``make images`` / ``lmops images build``: the CPU and CUDA images from components/Dockerfile.

The build key is a digest of what goes into an image (the lock, the Dockerfile, the files of the build
context, the variant and the base); it is stored as the image's ``dev.lmops.build-key`` label, and a build
whose key matches the existing image is skipped (the tests build once per lock/code change, not per run).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from lmops import __version__
from lmops.config import REPO_ROOT
from lmops.config.image import ImageConfig, Variant
from lmops.images import base as base_image
from lmops.images.engine import Engine, EngineError, detect

DOCKERFILE = "components/Dockerfile"
KEY_LABEL = "dev.lmops.build-key"
BASE_LABEL = "dev.lmops.base"  # what the key was computed with, so that a run can tell a stale image
TORCH_LABEL = "dev.lmops.torch-source"
# the build context (.dockerignore is the same allow-list): what the image is made of
CONTEXT = ("requirements.runtime.lock", "pyproject.toml", "README.md", "src", "configs", "components", "pipelines", "operators")
TORCH_VERSION = "2.13.0"
# locally added CAs (an intercepting proxy's): pip in the build must trust them too
LOCAL_CA_GLOB = "/usr/local/share/ca-certificates/*.crt"


class BuildError(EngineError):
    """The image build failed; the message names the Dockerfile step."""


@dataclass
class Built:
    ref: str
    key: str
    cached: bool
    seconds: float
    size_bytes: int

    def line(self) -> str:
        how = "cached" if self.cached else f"built in {self.seconds:.0f}s"
        return f"{self.ref}: {how}, {self.size_bytes / 2**30:.2f} GiB (build key {self.key})"


def context_files(root: Path = REPO_ROOT) -> list[Path]:
    files = []
    for name in CONTEXT:
        p = root / name
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            files += [f for f in p.rglob("*") if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc"
                      and ".egg-info" not in str(f)]
    return sorted(files)


def build_key(variant: Variant, base: str, root: Path = REPO_ROOT, extra: dict | None = None) -> str:
    """sha256 of the context's files (paths and contents; .dockerignore, which selects them, too), the
    variant, the base and build settings."""
    h = hashlib.sha256()
    for f in [*context_files(root), *([root / ".dockerignore"] if (root / ".dockerignore").is_file() else [])]:
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    for k, v in sorted({"variant": variant, "base": base, **(extra or {})}.items()):
        h.update(f"{k}={v}\0".encode())
    return h.hexdigest()[:16]


def torch_wheels() -> str | None:
    """pip's find-links folder when it holds the torch CPU wheel (these machines): bind-mounted into the build."""
    try:
        out = subprocess.run(["python3", "-m", "pip", "config", "get", "global.find-links"], capture_output=True,
                             text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    folder = out.split()[0] if out else ""
    return folder if folder and glob.glob(f"{folder}/torch-{TORCH_VERSION}+cpu-*.whl") else None


def local_ca_pem() -> str:
    return "".join(Path(p).read_text() for p in sorted(glob.glob(LOCAL_CA_GLOB)))


def revision(root: Path = REPO_ROOT) -> str:
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        rev = ""
    return rev or "unknown"


def build(variant: Variant, *, engine: Engine | None = None, image: ImageConfig | None = None,
          base: str | None = None, local_ca: bool = True, force: bool = False, no_cache: bool = False,
          log=print) -> Built:
    """Build one variant unless an image with the same build key exists; returns what was done.
    force: build even so (the engine's layer cache still applies); no_cache: without the layer cache too."""
    engine = engine or detect(install=True)
    image = image or ImageConfig()
    ref = image.ref(variant)
    base = base_image.choose(engine, base, log=log)
    wheels = torch_wheels() if variant == "cpu" and engine.name == "podman" else None
    ca = local_ca_pem() if local_ca else ""
    # the CA and the wheel folder change how, not what, is installed: not part of the key
    key = build_key(variant, base, extra={"torch_source": "wheels" if wheels else "index"})
    started = time.time()
    if not (force or no_cache) and engine.image_label(ref, KEY_LABEL) == key:
        return Built(ref, key, True, 0.0, engine.image_size(ref))
    args = ["build", "-f", DOCKERFILE, "-t", ref, "--label", f"{KEY_LABEL}={key}",
            "--label", f"{BASE_LABEL}={base}", "--label", f"{TORCH_LABEL}={'wheels' if wheels else 'index'}",
            "--build-arg", f"BASE_IMAGE={base}", "--build-arg", f"VARIANT={variant}",
            "--build-arg", f"VERSION={image.tag}", "--build-arg", f"REVISION={revision()}",
            "--build-arg", f"EXTRA_CA_CERTS={ca}"]
    if no_cache:
        args.append("--no-cache")
    if engine.name == "podman":
        args += ["--layers", "--format", "docker"]  # layer cache; docker's manifest format, which every registry takes
    if wheels:  # buildah bind-mounts a host folder into every RUN step (docker build has no such flag)
        args += ["-v", f"{wheels}:{wheels}:ro", "--build-arg", f"TORCH_WHEELS={wheels}"]
    log(f"[images] building {ref} with {engine.name} on {base}"
        f"{' (torch from ' + wheels + ')' if wheels else ''}")
    previous = engine.run("image", "inspect", "--format", "{{.Id}}", ref, check=False).stdout.strip()
    _stream(engine, [*args, str(REPO_ROOT)], ref, log)
    if previous and previous != engine.run("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip():
        # the image this build replaced is now untagged: drop it (its shared layers stay; an image a
        # container still uses is refused, harmlessly)
        engine.run("rmi", previous, check=False)
    return Built(ref, key, False, time.time() - started, engine.image_size(ref))


# podman/buildah: "STEP 5/14: RUN ..."; docker (BuildKit): "#8 [4/9] RUN ..."
STEP = re.compile(r"^(STEP \d+/\d+: .*|#\d+ \[[^\]]*\d+/\d+\] .*)$")


def _stream(engine: Engine, args: list[str], ref: str, log) -> None:
    """Run the build with its output shown as it comes; a failure names the Dockerfile step that failed."""
    env = engine.environ()
    env.setdefault("DOCKER_BUILDKIT", "1")
    proc = subprocess.Popen([engine.exe, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, stdin=subprocess.DEVNULL)
    step, tail = "", []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip("\n")
        if STEP.match(line):
            step = line
        tail = (tail + [line])[-20:]
        if os.environ.get("LMOPS_IMAGES_QUIET") != "1" or STEP.match(line):
            log(f"    {line[:300]}")
    if proc.wait() != 0:
        raise BuildError(f"building {ref} failed at {step or 'the start'!s} (exit {proc.returncode}); last lines:\n"
                         + "\n".join(tail))


def build_all(variants: list[Variant], **kw) -> list[Built]:
    return [build(v, **kw) for v in variants]


def image_for_run(variant: Variant = "cpu", image: ImageConfig | None = None, engine: Engine | None = None) -> str:
    """The image a containerized run uses; a clear error when it was never built."""
    engine = engine or detect()
    ref = (image or ImageConfig()).ref(variant)
    if not engine.image_exists(ref):
        raise EngineError(f"image {ref} not found in {engine.name}: build it first with `make images` "
                          f"(lmops images build --variant {variant})")
    labels = json.loads(engine.run("image", "inspect", "--format", "{{json .Config.Labels}}", ref).stdout) or {}
    built_from, base = labels.get(KEY_LABEL), labels.get(BASE_LABEL)
    torch_source = {"torch_source": labels.get(TORCH_LABEL, "")}
    if built_from and base and built_from != build_key(variant, base, extra=torch_source):
        print(f"[images] warning: {ref} was built from other sources than this checkout's (build key {built_from}):"
              " `make images` rebuilds it", file=sys.stderr, flush=True)
    return ref


__all__ = ["build", "build_all", "build_key", "Built", "BuildError", "image_for_run", "__version__"]
