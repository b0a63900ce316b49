"""Stage 3 on a cluster: the KubeRay RayJob that runs training (a head pod + a GPU worker group).

The number of worker pods is ``train.num_workers``; everything about the pods is here. Values are
checked the way the API server would check them (Kubernetes quantities, DNS names), so a typo fails
when the config loads, not minutes later as a RayJob the cluster refuses.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from lmops.config.base import Section
from lmops.config.k8s import (
    DNS_LABEL, DNS_SUBDOMAIN, INT32_MAX, NodeSelector, Tolerations, check_env_names, pod_tolerations,
    quantity,
)
from lmops.config.serve import _CREDENTIAL_WORDS


class KubeRayConfig(Section):
    """The RayJob (ray.io/v1) the cluster train step submits: pods, resources, credentials, waiting."""

    namespace: str = Field("default", max_length=63)
    """Namespace of the RayJob (and of the Ray cluster KubeRay creates for it)."""
    service_account: str | None = None
    """ServiceAccount of the head and worker pods (e.g. one bound to an S3 role); None = the namespace default."""
    head_cpu: str = "2"
    """CPU limit of the head pod (it runs the driver and Ray's control plane; training ranks only with head_ranks)."""
    head_cpu_request: str | None = None
    """CPU request of the head pod when lower than its limit (pods sharing a small node's cores); None = the limit."""
    head_memory: str = "8Gi"
    """Memory request and limit of the head pod."""
    head_ranks: int = Field(0, ge=0)
    """Training ranks on the head pod besides one per worker pod (CPU training only: the head has no GPU). 1 makes a
    head and one worker pod a two-node DDP run on a small CPU cluster; 0 keeps the head free for Ray's control plane."""
    worker_cpu: str = "8"
    """CPU limit of each worker pod (Ray's num-cpus, as KubeRay derives it)."""
    worker_cpu_request: str | None = None
    """CPU request of each worker pod when lower than its limit; None = the limit (a Guaranteed pod)."""
    worker_memory: str = "32Gi"
    """Memory request and limit of each worker pod."""
    gpus_per_worker: int = Field(1, ge=0)
    """nvidia.com/gpu per worker pod; one training rank runs per GPU (0 = CPU training, one rank per pod)."""
    node_selector: NodeSelector = Field(default_factory=dict)
    """nodeSelector of the worker pods, e.g. {cloud.google.com/gke-accelerator: nvidia-l4}."""
    tolerations: Tolerations = None
    """Tolerations of the worker pods (Kubernetes spelling: key, operator, value, effect, tolerationSeconds);
    None = tolerate the nvidia.com/gpu taint when the workers ask for GPUs, nothing for CPU workers."""
    env_from_secrets: list[str] = Field(default_factory=list)
    """Secrets exposed to every pod with envFrom (S3 / MLflow credentials); never inline credentials in env."""
    env: dict[str, str] = Field(default_factory=dict)
    """Extra plain environment variables of every pod; credential-looking names are refused."""
    timeout_s: float = Field(6 * 3600.0, gt=0, le=INT32_MAX)
    """Longest the RayJob may run (its activeDeadlineSeconds); the submitter also stops waiting then."""
    poll_s: float = Field(10.0, gt=0, le=600)
    """Seconds between status checks while waiting."""
    ttl_seconds_after_finished: int = Field(60, ge=0, le=INT32_MAX)
    """Seconds KubeRay keeps the finished job's Ray cluster (and its GPUs) before deleting it. The RayJob
    and its submitter Job, whose log holds the job's output, stay either way."""
    delete_on_timeout: bool = True
    """When waiting times out, delete the RayJob so its cluster does not keep holding GPUs."""
    staging_uri: str | None = None
    """s3:// prefix for a pipeline whose artifacts are not in S3 (kfp's local runner; a Kubeflow whose artifact
    store is GCS or a volume): the train task uploads the tokens to ``<prefix>/tokens/<digest>/`` (reused by a
    re-run) and the RayJob writes its checkpoint under ``<prefix>/checkpoints/``, since the job's pods reach
    only S3. Unused when the artifacts are in S3 or MinIO."""

    @field_validator("head_cpu", "head_memory", "worker_cpu", "worker_memory", mode="before")
    @classmethod
    def _quantity(cls, v: Any) -> str:
        return quantity(v)

    @field_validator("head_cpu_request", "worker_cpu_request", mode="before")
    @classmethod
    def _optional_quantity(cls, v: Any) -> str | None:
        return None if v is None else quantity(v)

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, v: str) -> str:
        if not DNS_LABEL.match(v):
            raise ValueError("not a valid namespace (lower-case letters, digits and '-')")
        return v

    @field_validator("service_account")
    @classmethod
    def _service_account(cls, v: str | None) -> str | None:
        if v is not None and not (DNS_SUBDOMAIN.match(v) and len(v) <= 253):
            raise ValueError("not a valid ServiceAccount name (lower-case letters, digits, '-', '.')")
        return v

    @field_validator("staging_uri")
    @classmethod
    def _staging_uri(cls, v: str | None) -> str | None:
        if v is not None and not (v.startswith("s3://") and len(v.rstrip("/")) > len("s3://")):
            raise ValueError("expected an s3:// prefix (s3://bucket/path): the RayJob's pods reach only S3")
        return v.rstrip("/") if v else v

    @field_validator("env_from_secrets")
    @classmethod
    def _secret_names(cls, v: list[str]) -> list[str]:
        bad = [s for s in v if not (DNS_SUBDOMAIN.match(s) and len(s) <= 253)]
        if bad:
            raise ValueError(f"{bad} are not valid Secret names (lower-case letters, digits, '-', '.')")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        check_env_names(v)
        secret_like = [k for k in v if any(w in k.upper() for w in _CREDENTIAL_WORDS)]
        if secret_like:
            raise ValueError(f"env {secret_like} look like credentials; never inline them in a manifest:"
                             " put them in a Secret and name it in kuberay.env_from_secrets")
        return v

    def worker_tolerations(self) -> list[dict[str, Any]]:
        """The tolerations the worker pods get: the configured ones, else the GPU taint's when they ask for GPUs."""
        return pod_tolerations(self.tolerations, self.gpus_per_worker)
