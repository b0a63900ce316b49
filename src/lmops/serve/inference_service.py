"""InferenceService (serving.kserve.io/v1beta1) manifests for a model directory, as plain dicts.

Two predictors for the same directory:
- ``lmops``: a custom container (our image runs ``lmops serve``: v1, v2 and OpenAI completions,
  micro-batching, our limits). KServe's storage initializer downloads ``STORAGE_URI`` into
  /mnt/models for it; a ``models:/`` URI is resolved by the container itself through MLflow.
- ``huggingface``: KServe's Hugging Face runtime (``modelFormat: huggingface``) on the same
  directory, needing no image of ours.
S3 credentials and API keys are only ever referenced: the ServiceAccount KServe's storage initializer
reads, or a Secret exposed with envFrom; API keys (lmops.serve.auth) come from a secretKeyRef. The
readiness probe uses KServe v1's readiness route, which needs no key. DeployConfig refuses credential-looking env entries.
Every predictor pod passes the restricted Pod Security Standard (lmops.security.context) with a read-only
root filesystem; a GPU predictor gets the cuda image variant, the GPU toleration and deploy.node_selector.
"""

from __future__ import annotations

from typing import Any

from lmops.config import DeployConfig, ImageConfig, ServeConfig
from lmops.errors import LmopsError
from lmops.security.context import CACHE_DIR, SERVER_DIRS, harden, harden_container
from lmops.config.storage_access import storage_access_problem

API_VERSION = "serving.kserve.io/v1beta1"
CONTAINER_NAME = "kserve-container"  # the name KServe looks for to inject STORAGE_URI downloads
MODEL_MOUNT = "/mnt/models"
PORT = 8080


def storage_uri_for(cfg: DeployConfig, model_uri: str) -> str | None:
    if cfg.storage_uri:
        return cfg.storage_uri
    return model_uri if model_uri.startswith(("s3://", "gs://", "pvc://", "hf://", "https://")) else None


def predictor_image(cfg: DeployConfig, image: ImageConfig) -> str:
    """deploy.image if set, else the image setting's variant for the predictor's hardware."""
    return cfg.image or image.ref("cuda" if cfg.resources.gpus else "cpu")


def render_inference_service(cfg: DeployConfig, serve: ServeConfig, model_uri: str,
                             labels: dict[str, str] | None = None, image: ImageConfig | None = None) -> dict[str, Any]:
    image = image or ImageConfig()
    predictor: dict[str, Any] = {"minReplicas": cfg.min_replicas, "maxReplicas": cfg.max_replicas}
    if cfg.canary_traffic_percent is not None:
        predictor["canaryTrafficPercent"] = cfg.canary_traffic_percent
    if cfg.service_account:
        predictor["serviceAccountName"] = cfg.service_account
    storage = storage_uri_for(cfg, model_uri)
    problem = storage_access_problem(cfg, storage)
    if problem:
        raise LmopsError(problem)
    if cfg.runtime == "lmops":
        predictor["containers"] = [_lmops_container(cfg, serve, model_uri, storage, image)]
        harden(predictor, SERVER_DIRS)  # the predictor is a PodSpec inline
    else:
        if storage is None:
            raise LmopsError(f"deploy.runtime=huggingface needs a storage URI (s3://...), not {model_uri!r}:"
                             " set deploy.storage_uri to the registered version's artifact location")
        args = [f"--model_name={cfg.name}"]
        if cfg.resources.gpus == 0:
            args.append("--backend=huggingface")  # KServe's HF runtime otherwise tries vLLM (GPU)
        model: dict[str, Any] = {"modelFormat": {"name": "huggingface"}, "storageUri": storage, "args": args,
                                 "resources": _resources(cfg)}
        env = _env(cfg)
        if env:
            model["env"] = env
        if cfg.s3_secret:
            model["envFrom"] = [{"secretRef": {"name": cfg.s3_secret}}]
        harden(predictor, SERVER_DIRS)
        harden_container(model, SERVER_DIRS)  # the runtime's container: KServe merges these fields into it
        predictor["model"] = model
    if cfg.node_selector:
        predictor["nodeSelector"] = dict(cfg.node_selector)
    tolerations = cfg.pod_tolerations()
    if tolerations:
        predictor["tolerations"] = tolerations
    return {
        "apiVersion": API_VERSION,
        "kind": "InferenceService",
        "metadata": {
            "name": cfg.name,
            "namespace": cfg.namespace,
            "labels": {"app.kubernetes.io/managed-by": "lmops", "app.kubernetes.io/name": cfg.name, **(labels or {})},
            "annotations": {"lmops.dev/model-uri": model_uri},
        },
        "spec": {"predictor": predictor},
    }


def _lmops_container(cfg: DeployConfig, serve: ServeConfig, model_uri: str, storage: str | None,
                     image: ImageConfig) -> dict[str, Any]:
    # with a storage URI KServe downloads before start; otherwise (models:/) the server resolves it
    model_arg = MODEL_MOUNT if storage else model_uri
    env = _env(cfg)
    if storage:
        env.insert(0, {"name": "STORAGE_URI", "value": storage})
    if cfg.api_key_secret:  # the keys stay in the Secret: the pod spec only names it
        env.insert(0, {"name": "LMOPS_API_KEYS", "valueFrom": {"secretKeyRef": {
            "name": cfg.api_key_secret, "key": cfg.api_key_secret_key}}})
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": predictor_image(cfg, image),
        "imagePullPolicy": image.pull_policy,
        "command": ["lmops"],
        # 0.0.0.0 inside the pod: the kubelet probes and the queue-proxy reach it over the pod IP;
        # the download cache on the writable emptyDir (the root filesystem is read-only)
        "args": ["serve", "--model", model_arg, "--host", "0.0.0.0", "--port", str(PORT), "--name", cfg.name,
                 "--set", f"serve.max_new_tokens={serve.max_new_tokens}",
                 "--set", f"serve.max_prompt_tokens={serve.max_prompt_tokens}",
                 "--set", f"serve.max_batch_size={serve.max_batch_size}",
                 "--set", f"serve.max_wait_ms={serve.max_wait_ms}",
                 "--set", f"serve.cache_dir={CACHE_DIR}/serve",
                 # admission and caching (lmops.serve.admission, response_cache): the same in the pod
                 "--set", f"serve.max_queued_requests={serve.max_queued_requests}",
                 "--set", f"serve.response_cache_size={serve.response_cache_size}",
                 *[a for k in ("rate_limit_requests_per_minute", "rate_limit_tokens_per_minute")
                   if getattr(serve, k) is not None for a in ("--set", f"serve.{k}={getattr(serve, k)}")]],
        "ports": [{"containerPort": PORT, "protocol": "TCP"}],
        "resources": _resources(cfg),
        "readinessProbe": {"httpGet": {"path": f"/v1/models/{cfg.name}", "port": PORT}, "periodSeconds": 5},
    }
    if env:
        container["env"] = env
    if cfg.s3_secret:
        container["envFrom"] = [{"secretRef": {"name": cfg.s3_secret}}]
    return container


def _env(cfg: DeployConfig) -> list[dict[str, Any]]:
    return [{"name": k, "value": v} for k, v in sorted(cfg.env.items())]


def _resources(cfg: DeployConfig) -> dict[str, dict[str, Any]]:
    r = cfg.resources
    amounts: dict[str, Any] = {"cpu": r.cpu, "memory": r.memory}
    if r.gpus:
        amounts["nvidia.com/gpu"] = r.gpus
    # requests == limits: a Guaranteed pod, and GPUs may only be given as limits equal to requests
    return {"requests": dict(amounts), "limits": dict(amounts)}
