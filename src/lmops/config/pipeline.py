"""The Kubeflow pipeline's task pods: CPU/memory per task, and how tasks reach the S3 artifact store.

Requests and limits keep the tasks out of the BestEffort QoS class (the first evicted under node pressure).
The train task's pod depends on the launcher: with ``local`` Ray trains inside it (the big one, GPUs with
``train_pod_gpus``); with ``kuberay`` it only submits a RayJob and waits (small, CPU-only, never on GPU nodes).
S3 credentials reach the tasks only as a Secret reference (kfp-kubernetes ``use_secret_as_env``), never inline.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from lmops.config.base import Section
from lmops.config.k8s import DNS_SUBDOMAIN, ENV_NAME, cpu_cores, quantity

KFP_CPU = r"^([0-9]*[.])?[0-9]+m?$"  # what kfp's set_cpu_request / set_cpu_limit accept
KFP_MEMORY = r"^([0-9]*[.])?[0-9]+(E|Ei|P|Pi|T|Ti|G|Gi|M|Mi|K|Ki)?$"  # kfp's set_memory_request / limit


class TaskResources(Section):
    """CPU and memory of one task's pod (Kubernetes quantities, in the forms kfp accepts)."""

    cpu: str = Field("500m", pattern=KFP_CPU)
    """CPU request, e.g. "500m", "2"."""
    memory: str = Field("1Gi", pattern=KFP_MEMORY)
    """Memory request, e.g. "512Mi", "4Gi"."""
    cpu_limit: str | None = Field(None, pattern=KFP_CPU)
    """CPU limit (None = the request)."""
    memory_limit: str | None = Field(None, pattern=KFP_MEMORY)
    """Memory limit (None = the request: a pod over its request is the first one the kubelet evicts)."""

    @field_validator("cpu", "memory", "cpu_limit", "memory_limit", mode="before")
    @classmethod
    def _quantity(cls, v: Any) -> Any:
        return None if v is None else quantity(v)

    def limits(self) -> tuple[str, str]:
        return self.cpu_limit or self.cpu, self.memory_limit or self.memory


def _res(cpu: str, memory: str, cpu_limit: str | None = None, memory_limit: str | None = None):
    return lambda: TaskResources(cpu=cpu, memory=memory, cpu_limit=cpu_limit, memory_limit=memory_limit)


class S3SecretRef(Section):
    """A Secret holding S3 credentials, and its keys; the tasks get them as AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY."""

    name: str = "mlpipeline-minio-artifact"
    """The Secret (stock Kubeflow creates this one, for its MinIO, in every profile namespace)."""
    access_key_key: str = "accesskey"
    """Key of the access key id in the Secret."""
    secret_key_key: str = "secretkey"
    """Key of the secret access key in the Secret."""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not (DNS_SUBDOMAIN.match(v) and len(v) <= 253):
            raise ValueError("not a valid Secret name (lower-case letters, digits, '-', '.')")
        return v

    @field_validator("access_key_key", "secret_key_key")
    @classmethod
    def _key(cls, v: str) -> str:
        if not (ENV_NAME.match(v) and len(v) <= 253):
            raise ValueError("not a valid Secret key (letters, digits, '-', '_', '.')")
        return v


class PipelineConfig(Section):
    """The compiled pipeline's task pods. Read when the pipeline is compiled (``make pipeline``; set
    $LMOPS_PIPELINE_CONFIG to a preset or YAML to compile with yours), except the train task's resources,
    which the resolve-config task hands to it at run time (they depend on the ``launcher`` parameter)."""

    resolve_config: TaskResources = Field(default_factory=_res("100m", "512Mi", "1", "512Mi"))
    build: TaskResources = Field(default_factory=_res("1", "2Gi", "2", "4Gi"))
    tokenize: TaskResources = Field(default_factory=_res("1", "2Gi", "2", "4Gi"))
    train_local: TaskResources = Field(default_factory=_res("4", "16Gi", "8", "16Gi"))
    """The train task with launcher=local: Ray Train runs in this pod."""
    train_kuberay: TaskResources = Field(default_factory=_res("250m", "1Gi", "1", "2Gi"))
    """The train task with launcher=kuberay: it submits the RayJob, waits, downloads the checkpoint."""
    evaluate: TaskResources = Field(default_factory=_res("2", "8Gi", "4", "8Gi"))
    compress: TaskResources = Field(default_factory=_res("4", "16Gi", "8", "16Gi"))
    register_model: TaskResources = Field(default_factory=_res("500m", "2Gi", "1", "4Gi"))
    """The register task (a field named `register` would shadow the model class's own attribute)."""
    deploy: TaskResources = Field(default_factory=_res("250m", "512Mi", "1", "1Gi"))
    s3_endpoint_url: str | None = "http://minio-service.kubeflow:9000"
    """S3 endpoint of the tasks (LMOPS_S3_ENDPOINT_URL, plain env; stock Kubeflow's MinIO); None = AWS S3."""
    s3_secret: S3SecretRef | None = Field(default_factory=S3SecretRef)
    """Secret with the tasks' S3 credentials (None = none: the pods' own identity, e.g. IRSA)."""

    @model_validator(mode="after")
    def _limits_not_below_requests(self) -> "PipelineConfig":
        for name in type(self).model_fields:
            res = getattr(self, name)
            if isinstance(res, TaskResources) and cpu_cores(res.limits()[0], name) < cpu_cores(res.cpu, name):
                raise ValueError(f"{name}.cpu_limit ({res.cpu_limit}) is below its request ({res.cpu})")
        return self
