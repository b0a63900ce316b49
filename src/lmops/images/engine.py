"""Which container engine builds and runs the lmops image: docker where its daemon answers, else podman.

On a machine with neither (a fresh CI machine), podman, buildah and their helpers are installed from
Debian's packages when we are root and apt-get exists. Podman needs two engine settings on these hosts
(measured, see STACK-NOTES "Containers without a Docker engine"), which lmops writes to a
``containers.conf`` of its own, passed as ``CONTAINERS_CONF`` to every podman and buildah call and to the
API service: system files are left alone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from lmops.errors import LmopsError

# what podman needs on a Debian host, and mmdebstrap for the base image when no registry is reachable
PODMAN_PACKAGES = ("podman", "buildah", "runc", "mmdebstrap", "uidmap", "fuse-overlayfs", "slirp4netns", "skopeo")

# crun 1.8 fails on hybrid cgroup v1/v2 hosts; the default rlimits cannot be set without
# CAP_SYS_RESOURCE, so ask for what the host allows (open files 20000, conmon's 32768 processes)
CONTAINERS_CONF = """\
# written by lmops (lmops.images.engine); used through CONTAINERS_CONF, not installed system-wide
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
"""


class EngineError(LmopsError):
    """No usable container engine, or an engine command failed."""


@dataclass
class Engine:
    """A container engine command line (``docker`` or ``podman``) and the environment it needs."""

    name: str
    exe: str
    env: dict[str, str] = field(default_factory=dict)

    def environ(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def run(self, *args: str, check: bool = True, capture: bool = True, timeout: float | None = None
            ) -> subprocess.CompletedProcess:
        proc = subprocess.run([self.exe, *args], env=self.environ(), text=True, timeout=timeout,
                              capture_output=capture, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise EngineError(f"{self.name} {' '.join(args[:3])} ... failed ({proc.returncode}): "
                              f"{(proc.stderr or '').strip()[-800:]}")
        return proc

    def image_label(self, ref: str, label: str) -> str | None:
        """The label's value on a local image; None when the image (or the label) is absent."""
        proc = self.run("image", "inspect", "--format", f'{{{{ index .Labels "{label}" }}}}', ref, check=False)
        if proc.returncode != 0:
            return None
        value = proc.stdout.strip()
        return None if value in ("", "<no value>") else value

    def image_exists(self, ref: str) -> bool:
        return self.run("image", "inspect", ref, check=False).returncode == 0

    def image_size(self, ref: str) -> int:
        return int(self.run("image", "inspect", "--format", "{{.Size}}", ref).stdout.strip())


def conf_dir() -> Path:
    """lmops' own engine settings (outside the checkout: shared by every clone on the machine)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lmops" / "containers"


def containers_conf() -> Path:
    """Write (or keep) lmops' containers.conf and return its path."""
    path = conf_dir() / "containers.conf"
    if not path.exists() or path.read_text() != CONTAINERS_CONF:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(CONTAINERS_CONF)
        os.replace(tmp, path)
    return path


def podman() -> Engine:
    exe = shutil.which("podman")
    if exe is None:
        raise EngineError("podman is not installed (make images installs it: apt-get install " + " ".join(PODMAN_PACKAGES) + ")")
    return Engine("podman", exe, {"CONTAINERS_CONF": str(containers_conf())})


def docker_answers() -> bool:
    """The docker CLI alone is not an engine: its daemon must answer (these machines ship the CLI only)."""
    exe = shutil.which("docker")
    if exe is None:
        return False
    try:
        return subprocess.run([exe, "info"], capture_output=True, timeout=10, stdin=subprocess.DEVNULL).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def detect(install: bool = False, prefer: str | None = None) -> Engine:
    """docker when its daemon answers, else podman (installed first with ``install`` when missing).

    prefer: "docker" or "podman" ($LMOPS_CONTAINER_ENGINE), which must then be usable.
    """
    prefer = prefer or os.environ.get("LMOPS_CONTAINER_ENGINE") or None
    if prefer not in (None, "docker", "podman"):
        raise EngineError(f"LMOPS_CONTAINER_ENGINE={prefer!r}: expected docker or podman")
    if prefer != "podman" and docker_answers():
        return Engine("docker", shutil.which("docker") or "docker")
    if prefer == "docker":
        raise EngineError("docker was asked for but its daemon does not answer (`docker info` fails)")
    if shutil.which("podman") is None and install:
        install_podman()
    return podman()


def install_podman(packages: tuple[str, ...] = PODMAN_PACKAGES) -> None:
    """apt-get install podman and its helpers (about 15 s); a clear error where that is not possible."""
    missing = [p for p in packages if not _dpkg_installed(p)]
    if not missing:
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise EngineError("no container engine: neither a docker daemon nor podman is here, and lmops can only"
                          " install podman as root on Debian/Ubuntu. Install docker, or: sudo apt-get install "
                          + " ".join(packages))
    print(f"[images] installing {' '.join(missing)} (apt-get)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *missing]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise EngineError(f"{' '.join(cmd[:3])} failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")


def _dpkg_installed(package: str) -> bool:
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
    return proc.returncode == 0 and "install ok installed" in proc.stdout
