"""The cluster's binaries: kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy
and the pod sandbox's ``pause`` built once from Debian bookworm's ``kubernetes`` source package
(build_kubernetes.sh, the measured recipe), etcd from Debian's ``etcd-server``.

The build takes 10-16 minutes on 2 cores, so its output is cached outside the checkout, in
``$LMOPS_CACHE_DIR`` (default ``~/.cache/lmops``) under ``kubernetes-<version>-<recipe hash>/``: a changed
recipe builds afresh, an unchanged one never rebuilds. A lock file makes concurrent callers (two test
sessions, ``make cluster`` during ``make test``) wait for one build instead of running two.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from lmops.errors import LmopsError

K8S_VERSION = "v1.20.2"
# The only kube-apiserver source a Debian archive offers (bookworm); "really" 1.20.2 despite the name.
K8S_DEB_VERSION = "1.20.5+really1.20.2-1.1+deb12u1"
RECIPE = Path(__file__).with_name("build_kubernetes.sh")


class BuildError(LmopsError):
    """A step of the binaries' build failed; the message names the step and the fix."""


BUILT = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "pause")


@dataclass(frozen=True)
class Binaries:
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubelet: Path
    kube_proxy: Path
    pause: Path
    etcd: Path


def cache_root() -> Path:
    return Path(os.environ.get("LMOPS_CACHE_DIR") or Path.home() / ".cache" / "lmops")


def build_dir() -> Path:
    """Where this version built by this recipe lives (the key: version + the recipe's bytes)."""
    digest = hashlib.sha256(RECIPE.read_bytes() + K8S_DEB_VERSION.encode()).hexdigest()[:12]
    return cache_root() / f"kubernetes-{K8S_VERSION}-{digest}"


def find() -> Binaries | None:
    """The cached binaries and etcd, or None when any is missing."""
    out = build_dir() / "bin"
    etcd = shutil.which("etcd") or "/usr/bin/etcd"
    bins = Binaries(*(out / name for name in BUILT), etcd=Path(etcd))
    ok = all(os.access(p, os.X_OK) for p in asdict(bins).values())
    return bins if ok else None


def ensure(echo=None) -> Binaries:
    """The binaries, building them first when missing (progress lines go to ``echo``, default stderr)."""
    echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
    bins = find()
    if bins is not None:
        return bins
    target = build_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            echo(f"lmops cluster: another process is building the Kubernetes binaries into {target}; waiting")
            fcntl.flock(lock, fcntl.LOCK_EX)
        bins = find()  # the other builder may have finished
        if bins is not None:
            return bins
        _build(target, echo)
    bins = find()
    if bins is None:
        raise BuildError(f"the build finished but {target}/bin lacks a binary, or etcd is not installed")
    return bins


def _build(target: Path, echo) -> None:
    # Build into a scratch folder next to the cache entry and rename it in place at the end, so an
    # interrupted build never leaves a half-filled entry that find() would trust.
    staging = target.with_name(target.name + ".partial")
    work = target.with_name(target.name + ".work")  # kept after a failure: the source download is reused
    shutil.rmtree(staging, ignore_errors=True)
    env = {"GOCACHE": str(cache_root() / "go-build"), **os.environ, "OUT": str(staging), "WORK": str(work),
           "K8S_VERSION": K8S_VERSION, "K8S_DEB_VERSION": K8S_DEB_VERSION}
    echo(f"lmops cluster: building {', '.join(BUILT)} {K8S_VERSION} from Debian's sources into {target} "
         f"(once; 10-16 min on 2 cores)")
    start = time.monotonic()
    proc = subprocess.Popen(["bash", str(RECIPE)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)
    tail: list[str] = []
    try:
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail = (tail + [line])[-40:]
            echo(f"  [{time.monotonic() - start:5.0f}s] {line}")
        rc = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if rc != 0:
        failed = next((t[len("FAILED: "):] for t in tail if t.startswith("FAILED: ")), None)
        fix = next((t[len("FIX: "):] for t in tail if t.startswith("FIX: ")), None)
        if failed:
            raise BuildError(f"building the Kubernetes binaries failed at step '{failed}': {fix}")
        raise BuildError("building the Kubernetes binaries failed (exit %d); last lines:\n%s" % (rc, "\n".join(tail)))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    shutil.rmtree(work, ignore_errors=True)
    (target / "BUILD_SECONDS").write_text(f"{time.monotonic() - start:.0f}\n")
    echo(f"lmops cluster: built in {time.monotonic() - start:.0f}s -> {target}/bin")


def main() -> None:
    """``python -m lmops.cluster.binaries``: build when missing, print where the binaries are."""
    try:
        bins = ensure()
    except LmopsError as e:
        sys.exit(f"error: {e}")
    for name, path in asdict(bins).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
