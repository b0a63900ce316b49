"""LMTrainingJob spec: the pipeline's parameters and how to run them (executor kubernetes, kfp or local)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from lmops.crd.common import CamelModel, FieldProblem, SpecError, parse

KIND, PLURAL = "LMTrainingJob", "lmtrainingjobs"


class RaySpec(CamelModel):
    workers: int = Field(1, ge=1, le=256)
    gpus_per_worker: int = Field(0, ge=0, le=16)
    launcher: Literal["kuberay", "local"] = "local"
    """Read by the kfp and local executors (the pipeline's launcher); the kubernetes executor's train is always a
    RayJob."""


class KfpSpec(CamelModel):
    host: str | None = None
    experiment: str = "lmops"
    namespace: str | None = None
    pipeline_package: str | None = None
    service_account: str | None = None
    enable_caching: bool = True


class KubernetesSpec(CamelModel):
    """Executor ``kubernetes``: a batch/v1 Job per stage and a KubeRay RayJob for train, in the job's namespace.
    Unset fields come from the operator's own settings (the chart's ``stageJobs`` values)."""

    staging_uri: str | None = Field(None, pattern=r"^s3://[^/]+(/.*)?$")
    """s3:// prefix the stages pass their outputs through: ``<stagingUri>/<namespace>/<name>/<stage>/``."""
    s3_secret: str | None = Field(None, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=253)
    """Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, given to every stage pod by reference (envFrom)."""
    s3_endpoint_url: str | None = None
    """S3 endpoint of the stage pods (MinIO, moto); unset = AWS S3."""
    backoff_limit: int = Field(1, ge=0, le=10)
    """Retries of a failed stage pod (each Job's backoffLimit) before the LMTrainingJob is Failed."""
    service_account: str | None = None
    """ServiceAccount of the stage pods (the namespace's default when unset)."""


class ExecutorSpec(CamelModel):
    type: Literal["kubernetes", "kfp", "local"] | None = None
    """Unset: kfp when kfp.host is given, else kubernetes."""
    kfp: KfpSpec | None = None
    kubernetes: KubernetesSpec | None = None

    @property
    def kind(self) -> str:
        """The executor that runs the job (``type``, or its default)."""
        return self.type or ("kfp" if self.kfp and self.kfp.host else "kubernetes")

    @model_validator(mode="after")
    def _kfp_needs_host(self):
        if self.kind == "kfp" and not (self.kfp and self.kfp.host):
            raise FieldProblem("kfp.host", "executor kfp needs the Kubeflow Pipelines endpoint (e.g. http://ml-pipeline.kubeflow:8888)")
        return self


class LMTrainingJobSpec(CamelModel):
    model_name: str = Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    config: str = Field("tiny", min_length=1)
    overrides: dict[str, str] = Field(default_factory=dict)
    sources: list[str] = Field(default_factory=list)
    mlflow_tracking_uri: str | None = None
    ray: RaySpec = RaySpec()
    executor: ExecutorSpec = ExecutorSpec()

    def override_list(self) -> list[str]:
        """As `lmops --set` takes them, in a stable order."""
        return [f"{k}={v}" for k, v in sorted(self.overrides.items())]


def parse_training_job(spec: dict[str, Any] | None, *, check_config: bool = True) -> LMTrainingJobSpec:
    """The typed spec; with ``check_config`` the preset and every override are loaded as the pipeline
    would load them, so a typo is a SpecError naming ``spec.overrides[key]`` before any run starts."""
    out = parse(LMTrainingJobSpec, spec)
    if check_config:
        _check_config(out)
    return out


def _check_config(spec: LMTrainingJobSpec) -> None:
    from lmops.config import ConfigError, load_config

    try:
        load_config(spec.config)
    except (ConfigError, FileNotFoundError) as e:
        raise SpecError("spec.config", str(e)) from None
    for item in spec.override_list():
        try:
            load_config(spec.config, [item])
        except ConfigError as e:
            raise SpecError(f"spec.overrides[{item.partition('=')[0]}]", str(e)) from None
