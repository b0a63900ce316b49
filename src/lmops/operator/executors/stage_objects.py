"""What the ``kubernetes`` executor creates for one LMTrainingJob: a batch/v1 Job per stage and the RayJob for
train, owned by the LMTrainingJob (deleting it deletes them and stops their pods). Rendering only, no I/O.

Every stage pod runs the lmops image with the stage's resources (the config's ``pipeline.<stage>``, the same
the compiled Kubeflow pipeline gives its tasks), the restricted security context with a read-only root, and
the S3 credentials by reference (``envFrom`` a Secret, never inline). The train RayJob -- and build's and
tokenize's when their engine is ray -- is the one the pipeline's kuberay launcher submits
(lmops.train.kuberay.render), reading its input stage's output and writing its own under the staging prefix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from lmops.config import Config, config_from_dict, load_config
from lmops.config.image import ImageConfig
from lmops.crd.training import LMTrainingJobSpec
from lmops.errors import LmopsError
from lmops.pipeline.stage_job import encode_spec
from lmops.security.context import CACHE, SHM, TMP, harden

STAGE_LABEL, JOB_LABEL = "lmops.dev/stage", "lmops.dev/training-job"
RESOURCES = {"build": "build", "tokenize": "tokenize", "evaluate": "evaluate", "compress": "compress",
             "register": "register_model"}  # stage -> its config.pipeline field
RAY_DATA_STAGES = ("build", "tokenize")
RAY_INPUT = {"build": None, "tokenize": "build", "train": "tokenize"}  # a RayJob stage -> the stage it reads


@dataclass(frozen=True)
class Target:
    """Where a job's stages run and pass their outputs: the LMTrainingJob (owner), the staging prefix, S3."""

    namespace: str
    name: str
    uid: str
    staging_uri: str
    s3_secret: str | None
    s3_endpoint_url: str | None
    backoff_limit: int
    service_account: str | None
    image: ImageConfig
    tracking_uri: str | None

    @property
    def prefix(self) -> str:
        """``<staging>/<namespace>/<name>``: the same for a re-applied job, so its stages find their outputs."""
        return f"{self.staging_uri.rstrip('/')}/{self.namespace}/{self.name}"

    def object_name(self, stage: str) -> str:
        """Deterministic per resource (name + uid): a restarted operator finds what it created."""
        base = re.sub(r"[^a-z0-9-]+", "-", self.name.lower()).strip("-")[:30].strip("-") or "lmtj"
        if not base[0].isalpha():
            base = "j" + base[:29]
        return f"{base}-{self.uid[:5]}-{stage}"

    def owner(self) -> dict[str, Any]:
        from lmops.crd import API_VERSION

        return {"apiVersion": API_VERSION, "kind": "LMTrainingJob", "name": self.name, "uid": self.uid,
                "controller": True}

    def labels(self, stage: str) -> dict[str, str]:
        return {"app.kubernetes.io/managed-by": "lmops", "app.kubernetes.io/part-of": "lmops",
                JOB_LABEL: self.name, STAGE_LABEL: stage}

    def env(self) -> dict[str, str]:
        env = {"PYTHONUNBUFFERED": "1"}
        if self.s3_endpoint_url:
            env.update(LMOPS_S3_ENDPOINT_URL=self.s3_endpoint_url, AWS_ENDPOINT_URL_S3=self.s3_endpoint_url)
        if self.tracking_uri:
            env["MLFLOW_TRACKING_URI"] = self.tracking_uri
        return env


def job_config(spec: LMTrainingJobSpec, target: Target) -> Config:
    """The job's configuration as its stage pods resolve it (lmops.pipeline.stage_job), plus where its RayJob
    runs: the job's namespace, its image, S3 and MLflow settings and the S3 Secret by reference."""
    params = [*spec.override_list(), f"registry.model_name={spec.model_name}",
              f"train.num_workers={spec.ray.workers}",
              f"train.use_gpu={'true' if spec.ray.gpus_per_worker else 'false'}",
              f"kuberay.gpus_per_worker={spec.ray.gpus_per_worker}"]
    if target.tracking_uri:
        params += [f"registry.tracking_uri={target.tracking_uri}", f"train.mlflow_tracking_uri={target.tracking_uri}"]
    cfg = load_config(spec.config, params)
    raw = cfg.model_dump(mode="json")
    if spec.sources:  # what a build RayJob reads (a build Job's pod resolves them itself, as resolve-config)
        raw["build"]["sources"] = list(spec.sources)
    kr = raw["kuberay"]
    kr.update(namespace=target.namespace, env={**target.env(), **(kr.get("env") or {})},
              env_from_secrets=[target.s3_secret] if target.s3_secret else list(kr.get("env_from_secrets") or []))
    if target.service_account:
        kr["service_account"] = target.service_account
    raw["image"] = target.image.model_dump(mode="json")
    return config_from_dict(raw, "LMTrainingJob config")


def stage_job(stage: str, spec: LMTrainingJobSpec, target: Target, cfg: Config, run_id: str) -> dict[str, Any]:
    """The batch/v1 Job of one stage (not train)."""
    res = getattr(cfg.pipeline, RESOURCES[stage])
    cpu_limit, memory_limit = res.limits()
    container = {
        "name": "stage", "image": target.image.ref("cpu"), "imagePullPolicy": target.image.pull_policy,
        "command": ["python", "-m", "lmops.pipeline.stage_job", stage, "--staging", target.prefix,
                    "--run-id", run_id, "--spec-b64", encode_spec(spec.model_dump(mode="json", by_alias=True,
                                                                                   exclude_none=True))],
        "workingDir": TMP.path,
        # a stage that uses Ray (compress) starts its own in the pod: no token to share with anyone
        "env": [{"name": k, "value": v} for k, v in sorted({**target.env(), "RAY_AUTH_MODE": "disabled"}.items())],
        "resources": {"requests": {"cpu": res.cpu, "memory": res.memory},
                      "limits": {"cpu": cpu_limit, "memory": memory_limit}},
        # the stage's outcome (or its error) is the termination message; a crash leaves its last log lines there
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if target.s3_secret:
        container["envFrom"] = [{"secretRef": {"name": target.s3_secret}}]
    pod: dict[str, Any] = {"restartPolicy": "Never", "enableServiceLinks": False, "containers": [container]}
    if target.service_account:
        pod["serviceAccountName"] = target.service_account
    harden(pod, (TMP, CACHE, SHM))
    labels = target.labels(stage)
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": target.object_name(stage), "namespace": target.namespace, "labels": labels,
                         "ownerReferences": [target.owner()]},
            "spec": {"backoffLimit": target.backoff_limit, "template": {"metadata": {"labels": labels}, "spec": pod}}}


def runs_on_ray(stage: str, cfg: Config) -> bool:
    """Whether a stage is a RayJob: train always; build and tokenize when their engine is ``ray`` or ``auto``
    (auto picks ray under a kuberay launcher, and this executor is one: its train is a RayJob)."""
    return stage == "train" or (stage in RAY_DATA_STAGES and getattr(cfg, stage).engine in ("ray", "auto"))


def stage_rayjob(stage: str, target: Target, cfg: Config) -> dict[str, Any]:
    """The RayJob of train (or of a data stage on Ray Data), as the pipeline's kuberay launcher renders it,
    reading its input stage's and writing its own output under the staging prefix, owned by the LMTrainingJob."""
    from lmops.train.kuberay.render import render_stage_rayjob

    source = RAY_INPUT[stage]
    manifest = render_stage_rayjob(stage, cfg, name=target.object_name(stage), output_uri=f"{target.prefix}/{stage}",
                                   input_uri=f"{target.prefix}/{source}" if source else None,
                                   labels=target.labels(stage))
    manifest["metadata"]["ownerReferences"] = [target.owner()]
    return manifest


def check_target(target: Target) -> None:
    if not target.staging_uri:
        raise LmopsError("executor kubernetes needs an S3 staging prefix: set spec.executor.kubernetes.stagingUri"
                         " (or the operator's $LMOPS_STAGING_URI, the chart's stageJobs.stagingUri)")
