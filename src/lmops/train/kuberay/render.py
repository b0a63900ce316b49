"""The RayJob (ray.io/v1) that trains a config on KubeRay: the config the job trains with, and the manifest.

KubeRay creates a Ray cluster (a head pod + ``train.num_workers`` worker pods), runs the entrypoint
on the head through a submitter Job (K8sJobMode), and deletes the cluster shortly after the job ends.
Pods only ever see S3 (credentials through Secrets named in ``kuberay.env_from_secrets``); nothing
local to the submitting pod exists in the Ray cluster.

Images come from the image setting: GPU workers run the cuda variant; the head (driver and Ray's control
plane), the submitter and CPU workers the cpu one (same Python and Ray, so one cluster). Only the worker pods
get the GPU placement. Every pod (head, workers, submitter) passes the restricted Pod Security Standard with
a read-only root filesystem; Ray writes to emptyDirs (/tmp, /tmp/ray, a cache folder, /dev/shm in memory).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import math
import os
import re
import shlex
import warnings
from typing import Any
from urllib.parse import urlsplit

from lmops import storage
from lmops.config import Config, ConfigError, config_from_dict
from lmops.config.image import ImageConfig, Variant
from lmops.config.k8s import INT32_MAX, cpu_cores
from lmops.config.kuberay import KubeRayConfig
from lmops.errors import LmopsError
from lmops.security.context import CACHE, RAY_DIRS, TMP, harden
from lmops.train.kuberay.ray_version import RAY_VERSION

API_VERSION = "ray.io/v1"
KIND = "RayJob"
HEAD_CONTAINER = "ray-head"
WORKER_CONTAINER = "ray-worker"
SUBMITTER_CONTAINER = "ray-job-submitter"
GPU_GROUP, CPU_GROUP = "gpu-workers", "cpu-workers"
# KubeRay's own default submitter resources (common.GetDefaultSubmitterTemplate): `ray job submit` and a log tail
SUBMITTER_RESOURCES = {"requests": {"cpu": "500m", "memory": "200Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}
GPU_RESOURCE = "nvidia.com/gpu"
# KubeRay derives the RayCluster's and its Services' names from the RayJob's: longer names fail its
# validation (ValidationFailed), so refuse them before submitting.
MAX_NAME = 47
NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# Where the job finds the MLflow server and the S3 store: copied from the submitting pod when set there.
# Credentials never travel this way (kuberay.env_from_secrets).
PASSTHROUGH_ENV = ("MLFLOW_TRACKING_URI", "LMOPS_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
                   "AWS_DEFAULT_REGION")
OPTIONAL_ENV = ("MLFLOW_TRACKING_URI",)  # the job runs without it (left out when the pods cannot reach it)


# ---------------------------------------------------------------- the config the job trains with
def cluster_config(cfg: Config, checkpoint_uri: str) -> Config:
    """``cfg`` adjusted for the job's Ray cluster.

    - One DDP rank per GPU: ``train.num_workers`` pods x ``gpus_per_worker`` GPUs gives that many
      ranks of one GPU each (the loop drives one device per rank, so a rank with two GPUs would idle
      one). Without GPUs, one rank per pod holding the pod's CPUs.
    - Checkpoints on shared storage: with several nodes, Ray Train needs a ``storage_path`` every
      node can reach; a local one becomes ``<checkpoint_uri>.ray/``.
    """
    kr, tc = cfg.kuberay, cfg.train
    pods = tc.num_workers
    ranks_per_pod = kr.gpus_per_worker or 1
    per_rank = dict(tc.resources_per_worker)
    gpu = per_rank.pop("GPU", 1)
    if kr.gpus_per_worker and gpu != 1:
        raise LmopsError(f"train.resources_per_worker.GPU={gpu:g}: on KubeRay each rank drives one GPU; put more GPUs"
                         f" in a pod with kuberay.gpus_per_worker (now {kr.gpus_per_worker}) instead")
    cores = cpu_cores(kr.worker_cpu, "kuberay.worker_cpu")
    if not kr.gpus_per_worker:
        per_rank.setdefault("CPU", cores)
    wanted = per_rank.get("CPU", 0) * ranks_per_pod
    if wanted > cores:
        # Ray would wait forever for CPUs no pod has; say so now
        raise LmopsError(f"train.resources_per_worker.CPU={per_rank['CPU']:g} x {ranks_per_pod} rank(s) per pod needs"
                         f" {wanted:g} CPUs, but kuberay.worker_cpu is {kr.worker_cpu}")
    if kr.head_ranks and kr.gpus_per_worker:
        raise LmopsError(f"kuberay.head_ranks={kr.head_ranks}: the head pod has no GPU, and every rank of a GPU run"
                         " drives one; use head_ranks only for CPU training (kuberay.gpus_per_worker=0)")
    if kr.head_ranks and per_rank.get("CPU", 0) * kr.head_ranks > cpu_cores(kr.head_cpu, "kuberay.head_cpu"):
        raise LmopsError(f"kuberay.head_ranks={kr.head_ranks} x {per_rank['CPU']:g} CPU per rank does not fit"
                         f" kuberay.head_cpu={kr.head_cpu}")
    storage_path = tc.storage_path
    if not (storage_path and storage.is_s3(storage_path)):
        storage_path = checkpoint_uri.rstrip("/") + ".ray/"
    train = tc.model_copy(update={"num_workers": pods * ranks_per_pod + kr.head_ranks,
                                  "use_gpu": kr.gpus_per_worker > 0,
                                  "resources_per_worker": per_rank, "storage_path": storage_path})
    return cfg.model_copy(update={"train": train, "cache_dir": None})


def encode_config(cfg: Config) -> str:
    """The whole resolved config as one shell-safe word (base64 of canonical JSON)."""
    text = json.dumps(cfg.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return base64.b64encode(text.encode()).decode()


def decode_config(b64: str) -> Config:
    try:
        raw = json.loads(base64.b64decode(b64, validate=True))
    except (binascii.Error, ValueError) as e:
        raise ConfigError(f"--config-b64: not base64 of a JSON config ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"--config-b64: expected a JSON object, got {type(raw).__name__}")
    return config_from_dict(raw, source="--config-b64")


# ---------------------------------------------------------------- the manifest
STAGES = ("build", "tokenize", "train")
"""The stages that run as a RayJob: the data stages on Ray Data (``engine: ray``), training on Ray Train."""
DATA_GROUP = "data-workers"


def entrypoint(cfg: Config, tokens_uri: str, checkpoint_uri: str) -> str:
    return stage_entrypoint("train", cfg, tokens_uri, checkpoint_uri)


def stage_entrypoint(stage: str, cfg: Config, input_uri: str | None, output_uri: str) -> str:
    """``python -m lmops.train.rayjob <run|build|tokenize> ...``: the command the job's head pod runs."""
    command = {"train": ["run", "--tokens", input_uri], "build": ["build"],
               "tokenize": ["tokenize", "--dataset", input_uri]}[stage]
    return shlex.join(["python", "-m", "lmops.train.rayjob", *command, "--out", output_uri,
                       "--config-b64", encode_config(cfg)])


def data_config(stage: str, cfg: Config) -> Config:
    """``cfg`` as a data stage's RayJob runs it: that stage on Ray Data, and no stage cache (the pods share no
    disk with the submitter; Kubeflow's cache and the job's re-attachment serve a re-run)."""
    section = getattr(cfg, stage)
    return cfg.model_copy(update={stage: section.model_copy(update={"engine": "ray"}), "cache_dir": None})


def render_rayjob(cfg: Config, *, name: str, tokens_uri: str, checkpoint_uri: str,
                  labels: dict[str, str] | None = None) -> dict[str, Any]:
    """The RayJob that trains ``cfg`` on the tokens at ``tokens_uri`` into ``checkpoint_uri`` (both s3://)."""
    return render_stage_rayjob("train", cfg, name=name, input_uri=tokens_uri, output_uri=checkpoint_uri,
                               labels=labels)


def render_stage_rayjob(stage: str, cfg: Config, *, name: str, output_uri: str, input_uri: str | None = None,
                        labels: dict[str, str] | None = None) -> dict[str, Any]:
    """The RayJob that runs one stage of ``cfg`` on KubeRay; every URI is s3:// (the pods reach only S3).

    - ``build``: reads ``cfg.build.sources`` (s3://), writes the dataset directory at ``output_uri``;
    - ``tokenize``: reads the dataset at ``input_uri``, writes the tokens directory at ``output_uri``;
    - ``train``: reads the tokens at ``input_uri``, writes the checkpoint directory at ``output_uri``.

    Data stages get a head pod (the Ray Data driver, which writes the shards) and ``<stage>.ray.worker_replicas``
    CPU worker pods sized by ``<stage>.ray`` (no GPU, no GPU placement); training gets ``train.num_workers``
    worker pods sized by ``kuberay.worker_*``. Every output directory appears with its manifest.json last.
    """
    if stage not in STAGES:
        raise LmopsError(f"RayJob stage {stage!r}: expected one of {', '.join(STAGES)}")
    if not (NAME.match(name) and len(name) <= MAX_NAME):
        raise LmopsError(f"RayJob name {name!r}: expected lower-case letters, digits and '-', starting with a letter,"
                         f" at most {MAX_NAME} characters (KubeRay derives longer names from it)")
    flags = {"train": ("tokens", "checkpoint"), "tokenize": ("dataset", "tokens"), "build": (None, "dataset")}[stage]
    for flag, uri in zip(flags, (input_uri, output_uri)):
        if flag and not (uri and storage.is_s3(uri)):
            raise LmopsError(f"{flag} URI {uri!r}: the RayJob's pods reach only S3; give an s3:// URI")
    kr = cfg.kuberay
    if stage == "train":
        job_cfg = cluster_config(cfg, output_uri)
        head_cpus, pods = _head_cpus(job_cfg, kr), cfg.train.num_workers
        group = GPU_GROUP if kr.gpus_per_worker else CPU_GROUP
        worker_resources = _resources(kr.worker_cpu, kr.worker_memory, kr.gpus_per_worker, kr.worker_cpu_request)
        variant: Variant = "cuda" if kr.gpus_per_worker else "cpu"
    else:
        local = [s for s in cfg.build.sources if not storage.is_s3(s)] if stage == "build" else []
        if local:
            raise LmopsError(f"build.sources {local}: the RayJob's pods reach only S3; give s3:// sources (or run"
                             " build with engine: local in the task's pod)")
        job_cfg, rc = data_config(stage, cfg), getattr(cfg, stage).ray
        group, pods, variant = DATA_GROUP, rc.worker_replicas, "cpu"
        # the head runs the driver; with worker pods it takes no Ray Data task (its memory is the driver's)
        head_cpus = "0" if pods else str(math.ceil(cpu_cores(kr.head_cpu, "kuberay.head_cpu")))
        worker_resources = _resources(rc.worker_cpu, rc.worker_memory, 0, rc.worker_cpu_request)
    meta_labels = {"app.kubernetes.io/managed-by": "lmops", "app.kubernetes.io/name": "lmops",
                   "app.kubernetes.io/component": stage, "lmops.dev/rayjob": name, **(labels or {})}
    env = job_env(kr)
    image = cfg.image
    head = _container(HEAD_CONTAINER, kr, image, "cpu", _resources(kr.head_cpu, kr.head_memory, 0, kr.head_cpu_request),
                      env)
    head["ports"] = [{"containerPort": 6379, "name": "gcs-server", "protocol": "TCP"},
                     {"containerPort": 8265, "name": "dashboard", "protocol": "TCP"},
                     {"containerPort": 10001, "name": "client", "protocol": "TCP"}]
    worker = _container(WORKER_CONTAINER, kr, image, variant, worker_resources, env)
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": kr.namespace, "labels": meta_labels},
        "spec": {
            "entrypoint": stage_entrypoint(stage, job_cfg, input_uri, output_uri),
            "submissionMode": "K8sJobMode",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": kr.ttl_seconds_after_finished,
            "activeDeadlineSeconds": min(math.ceil(kr.timeout_s), INT32_MAX),
            # our own submitter pod, only to give it the restricted securityContext; KubeRay fills in its
            # `ray job submit` command (the container has none) as it does for its default template
            "submitterPodTemplate": _submitter(meta_labels, kr, image),
            "rayClusterSpec": {
                "rayVersion": RAY_VERSION,
                "headGroupSpec": {
                    # training: num-cpus 0 unless kuberay.head_ranks (no rank lands on the head; the driver and
                    # Ray Train's controller need no CPU reservation); data: 0 beside worker pods
                    "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": head_cpus},
                    "template": _pod(meta_labels, head, kr, placed=False),
                },
                "workerGroupSpecs": [{
                    "groupName": group,
                    "replicas": pods,
                    "minReplicas": pods,
                    "maxReplicas": pods,
                    "rayStartParams": {},  # KubeRay sets num-cpus / num-gpus from the container's limits
                    # training's worker pods alone get the placement (node selector, GPU toleration)
                    "template": _pod(meta_labels, worker, kr, placed=stage == "train"),
                }],
            },
        },
    }


def job_env(kr: KubeRayConfig, environ: dict[str, str] | None = None) -> list[dict[str, str]]:
    """Plain env of every pod: the pass-through settings, then kuberay.env (which wins).

    A pass-through value naming this machine (127.0.0.1, localhost, ::1) means nothing in a pod. The S3
    endpoint is the job's only way to its inputs and outputs: such a value is refused, naming the variable,
    unless kuberay.env gives the pods their own. MLflow is optional to the job (the stage records its metrics
    in the manifest either way): such a MLFLOW_TRACKING_URI is left out with a warning.

    RAY_AUTH_MODE is left alone: KubeRay decides the cluster's auth (its authOptions set the mode and
    token on every pod), and the driver connects through RAY_ADDRESS, which never turns auth on by itself.
    """
    environ = os.environ if environ is None else environ
    env = {k: environ[k] for k in PASSTHROUGH_ENV if environ.get(k) and k not in kr.env}
    for name in [k for k, v in env.items() if is_loopback(v)]:
        if name in OPTIONAL_ENV:
            warnings.warn(f"{name}={env.pop(name)} names this machine, which the RayJob's pods cannot reach: not"
                          f" passed to them (set kuberay.env.{name} to an address the pods reach)", stacklevel=2)
        else:
            raise LmopsError(f"{name}={env[name]} names this machine, which the RayJob's pods cannot reach: set"
                             f" kuberay.env.{name} to an address the pods reach (e.g. the S3 service's)")
    aws_endpoint = (env.keys() | kr.env.keys()) & {"AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"}
    if env.get("LMOPS_S3_ENDPOINT_URL") and not aws_endpoint:
        # Ray Train writes checkpoints to s3:// through pyarrow, which knows only the AWS variables
        env["AWS_ENDPOINT_URL_S3"] = env["LMOPS_S3_ENDPOINT_URL"]
    env["PYTHONUNBUFFERED"] = "1"  # the job's log lines reach `kubectl logs` as they are printed
    env.update(kr.env)
    return [{"name": k, "value": v} for k, v in sorted(env.items())]


def is_loopback(uri: str) -> bool:
    """Whether a URL's host is this machine's loopback (what a pod resolves to itself)."""
    host = urlsplit(uri if "//" in uri else f"//{uri}").hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _head_cpus(job_cfg: Config, kr: KubeRayConfig) -> str:
    """The head's Ray CPUs: room for kuberay.head_ranks ranks (whole CPUs, as ``ray start --num-cpus`` takes)."""
    return str(math.ceil(job_cfg.train.resources_per_worker.get("CPU", 1) * kr.head_ranks))


def _resources(cpu: str, memory: str, gpus: int, cpu_request: str | None = None) -> dict[str, dict[str, Any]]:
    amounts: dict[str, Any] = {"cpu": cpu, "memory": memory}
    if gpus:
        amounts[GPU_RESOURCE] = gpus
    # requests == limits: Guaranteed pods, and GPUs may only be given as limits equal to requests; a lower CPU
    # request only where asked (a small node whose pods share its cores)
    return {"requests": {**amounts, **({"cpu": cpu_request} if cpu_request else {})}, "limits": dict(amounts)}


def _container(name: str, kr: KubeRayConfig, image: ImageConfig, variant: Variant, resources: dict[str, Any],
               env: list[dict[str, str]]) -> dict[str, Any]:
    container: dict[str, Any] = {"name": name, "image": image.ref(variant), "imagePullPolicy": image.pull_policy,
                                 "resources": resources, "env": [dict(e) for e in env]}
    if kr.env_from_secrets:
        container["envFrom"] = [{"secretRef": {"name": s}} for s in kr.env_from_secrets]
    return container


def _pod(labels: dict[str, str], container: dict[str, Any], kr: KubeRayConfig, *, placed: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [container]}
    if kr.service_account:
        spec["serviceAccountName"] = kr.service_account
    # KubeRay's head Service selects app.kubernetes.io/name=kuberay, and a template label of that name replaces
    # KubeRay's on the pods: with ours, the Service would select no pod and the workers never find the head
    labels = {k: v for k, v in labels.items() if k != "app.kubernetes.io/name"}
    if placed and kr.node_selector:
        spec["nodeSelector"] = dict(kr.node_selector)
    tolerations = kr.worker_tolerations() if placed else []
    if tolerations:
        spec["tolerations"] = tolerations
    harden(spec, RAY_DIRS)
    return {"metadata": {"labels": dict(labels)}, "spec": spec}


def _submitter(labels: dict[str, str], kr: KubeRayConfig, image: ImageConfig) -> dict[str, Any]:
    container = {"name": SUBMITTER_CONTAINER, "image": image.ref("cpu"), "imagePullPolicy": image.pull_policy,
                 "resources": {k: dict(v) for k, v in SUBMITTER_RESOURCES.items()}}
    spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    if kr.service_account:
        spec["serviceAccountName"] = kr.service_account
    harden(spec, (TMP, CACHE))  # the ray CLI writes under ~ and /tmp
    return {"metadata": {"labels": dict(labels)}, "spec": spec}
