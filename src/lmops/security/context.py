"""The securityContext and writable volumes of every pod lmops renders (Pod Security Standards "restricted").

The lmops images run as the fixed non-root UID/GID 1000 (components/Dockerfile). The root filesystem is
read-only, so everything that writes gets an emptyDir: /tmp (Python, pip, Ray's session dir under
/tmp/ray), a cache folder that HOME and the Hugging Face / torch caches point at, and /dev/shm as a
Memory emptyDir (the container runtime's default /dev/shm is 64 MiB: too small for Ray's object store and
torch's DataLoader / NCCL shared memory).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

UID = GID = 1000
"""The images' user (components/Dockerfile creates it with this UID and GID)."""
SECCOMP = {"type": "RuntimeDefault"}
CACHE_DIR = "/var/cache/lmops"
# HOME too: libraries that write under ~ (matplotlib, triton, ray's ~/.ray) find a writable folder
CACHE_ENV = {"HOME": CACHE_DIR, "XDG_CACHE_HOME": CACHE_DIR, "HF_HOME": f"{CACHE_DIR}/huggingface",
             "TRITON_CACHE_DIR": f"{CACHE_DIR}/triton", "TORCHINDUCTOR_CACHE_DIR": f"{CACHE_DIR}/inductor"}


@dataclass(frozen=True)
class WritableDir:
    """An emptyDir mounted where a read-only root filesystem would make a write fail."""

    name: str
    path: str
    medium: str | None = None  # "Memory": tmpfs, counted against the container's memory limit

    def volume(self) -> dict[str, Any]:
        return {"name": self.name, "emptyDir": {"medium": self.medium} if self.medium else {}}

    def mount(self) -> dict[str, Any]:
        return {"name": self.name, "mountPath": self.path}


TMP = WritableDir("tmp", "/tmp")
CACHE = WritableDir("cache", CACHE_DIR)
SHM = WritableDir("dshm", "/dev/shm", "Memory")
RAY_TMP = WritableDir("ray-tmp", "/tmp/ray")  # Ray's session logs and spilled objects: kept apart from /tmp

SERVER_DIRS = (TMP, CACHE)
RAY_DIRS = (TMP, RAY_TMP, CACHE, SHM)


def pod_security_context() -> dict[str, Any]:
    """Pod level: non-root with the image's UID, files on volumes owned by its group, RuntimeDefault seccomp."""
    return {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": GID, "fsGroup": GID,
            "seccompProfile": dict(SECCOMP)}


def container_security_context() -> dict[str, Any]:
    """Container level: repeated from the pod level so a container is compliant even if copied elsewhere."""
    return {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": GID, "allowPrivilegeEscalation": False,
            "privileged": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": dict(SECCOMP)}


def harden(pod_spec: dict[str, Any], dirs: tuple[WritableDir, ...]) -> dict[str, Any]:
    """Give ``pod_spec`` (a core/v1 PodSpec as a dict) the restricted contexts and the emptyDirs ``dirs`` in
    every container, plus the cache env (names a container already sets are kept). Returns it, changed in place."""
    pod_spec["securityContext"] = pod_security_context()
    volumes = pod_spec.setdefault("volumes", [])
    volumes.extend(d.volume() for d in dirs if all(v["name"] != d.name for v in volumes))
    for container in pod_spec.get("containers", []) + pod_spec.get("initContainers", []):
        harden_container(container, dirs)
    return pod_spec


def harden_container(container: dict[str, Any], dirs: tuple[WritableDir, ...]) -> dict[str, Any]:
    container["securityContext"] = container_security_context()
    mounts = container.setdefault("volumeMounts", [])
    mounts.extend(d.mount() for d in dirs if all(m["mountPath"] != d.path for m in mounts))
    env = container.setdefault("env", [])
    taken = {e["name"] for e in env}
    env.extend({"name": k, "value": v} for k, v in CACHE_ENV.items() if k not in taken)
    return container
