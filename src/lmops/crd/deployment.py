"""ModelDeployment spec: which version to serve, how, and how to roll a new one out."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from lmops.crd.common import CamelModel, FieldProblem, parse

KIND, PLURAL = "ModelDeployment", "modeldeployments"


class ModelRef(CamelModel):
    name: str = Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    alias: str = Field("champion", pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$")
    version: str | None = Field(None, pattern=r"^[1-9][0-9]*$")
    tracking_uri: str | None = None


class Toleration(CamelModel):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class ServingSpec(CamelModel):
    runtime: Literal["lmops", "huggingface"] = "lmops"
    image: str | None = None  # None: the operator's image setting, cpu or cuda variant by gpus
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    cpu: str = Field("1", pattern=r"^[0-9]+(\.[0-9]+)?m?$")
    memory: str = Field("2Gi", pattern=r"^[0-9]+(Ki|Mi|Gi|Ti|K|M|G|T)?$")
    gpus: int = Field(0, ge=0, le=16)
    service_account_name: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)

    @model_validator(mode="after")
    def _replicas(self):
        if self.min_replicas > self.max_replicas:
            raise FieldProblem("minReplicas", f"{self.min_replicas} is above maxReplicas ({self.max_replicas})")
        return self


class Step(CamelModel):
    traffic_percent: int = Field(ge=1, le=99)
    pause_seconds: int = Field(30, ge=0, le=86400)


class ConfigMapRef(CamelModel):
    name: str
    key: str = "probe.txt"


class QualityProbe(CamelModel):
    texts: list[str] | None = Field(None, max_length=1000)
    config_map_ref: ConfigMapRef | None = None
    uri: str | None = Field(None, pattern=r"^s3://[^/]+/.+")
    max_regression: float = Field(0.05, ge=0)

    @model_validator(mode="after")
    def _one_source(self):
        given = [k for k, v in (("texts", self.texts), ("configMapRef", self.config_map_ref), ("uri", self.uri)) if v]
        if len(given) != 1:
            what = "none is set" if not given else f"{' and '.join(given)} are set"
            raise FieldProblem(given[-1] if given else "texts",
                               f"give exactly one probe source (texts, configMapRef or uri); {what}")
        return self


class Gates(CamelModel):
    ready_timeout_seconds: int = Field(300, ge=1, le=86400)
    max_error_rate: float = Field(0.05, ge=0, le=1)
    min_requests: int = Field(0, ge=0)
    latency_p95_ms: float | None = Field(None, ge=1)
    quality_probe: QualityProbe | None = None


DEFAULT_STEPS = (Step(traffic_percent=10, pause_seconds=30), Step(traffic_percent=50, pause_seconds=30))


class RolloutSpec(CamelModel):
    steps: list[Step] = Field(default_factory=lambda: list(DEFAULT_STEPS), max_length=10)
    failure_limit: int = Field(0, ge=0, le=100)
    gates: Gates = Gates()

    @model_validator(mode="after")
    def _rising(self):
        for i in range(1, len(self.steps)):
            if self.steps[i].traffic_percent <= self.steps[i - 1].traffic_percent:
                raise FieldProblem(f"steps[{i}].trafficPercent",
                                   f"{self.steps[i].traffic_percent} must be above the step before"
                                   f" ({self.steps[i - 1].traffic_percent}): traffic only rises during a canary")
        return self


class RollbackSpec(CamelModel):
    revert_alias: bool = True


class ModelDeploymentSpec(CamelModel):
    model: ModelRef
    serving: ServingSpec = ServingSpec()
    rollout: RolloutSpec = RolloutSpec()
    rollback: RollbackSpec = RollbackSpec()
    history_limit: int = Field(20, ge=1, le=100)


def parse_deployment(spec: dict[str, Any] | None) -> ModelDeploymentSpec:
    return parse(ModelDeploymentSpec, spec)
