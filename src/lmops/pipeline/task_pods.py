"""The train task's pod, decided at run time from the resolved config and the launcher.

The resolve-config task returns these values and the pipeline sets them on the train task (image, CPU and
memory, GPUs, node selector, tolerations), because they depend on the ``launcher`` parameter:
- ``kuberay``: the pod only submits a RayJob and waits. CPU-only, the cpu image, the small
  ``pipeline.train_kuberay`` resources and no GPU placement: the RayJob's worker pods alone go to GPU nodes.
- ``local``: Ray trains inside the pod. ``pipeline.train_local`` resources; with ``train_pod_gpus`` > 0 the cuda
  image, that many GPUs, and the GPU node selector and tolerations (the nvidia.com/gpu taint's by default).
"""

from __future__ import annotations

from typing import Any

from lmops.config import Config
from lmops.config.k8s import gpu_tolerations
from lmops.errors import LmopsError

LAUNCHERS = ("kuberay", "local")


def train_pod(cfg: Config, launcher: str, pod_gpus: int, node_selector: dict | None = None,
              tolerations: list | None = None) -> dict[str, Any]:
    if launcher not in LAUNCHERS:
        raise LmopsError(f"launcher={launcher!r}: expected one of {', '.join(LAUNCHERS)}")
    if launcher == "kuberay":
        if pod_gpus:
            raise LmopsError(f"train_pod_gpus={pod_gpus} with launcher=kuberay: the train pod only submits the RayJob;"
                             " its workers get GPUs from gpus_per_worker (kuberay.gpus_per_worker)")
        res, gpus, selector, tolerate = cfg.pipeline.train_kuberay, 0, {}, []
    else:
        res, gpus = cfg.pipeline.train_local, max(pod_gpus, 0)
        selector = dict(node_selector or {}) if gpus else {}
        tolerate = list(tolerations or gpu_tolerations()) if gpus else []
    cpu_limit, memory_limit = res.limits()
    return {"image": cfg.image.ref("cuda" if gpus else "cpu"), "cpu": res.cpu, "memory": res.memory,
            "cpu_limit": cpu_limit, "memory_limit": memory_limit, "gpus": gpus, "node_selector": selector,
            "tolerations": tolerate}
