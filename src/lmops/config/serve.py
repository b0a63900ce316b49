"""Stage 7: the model server and deployment."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from lmops.config.base import Section
from lmops.config.k8s import NodeSelector, Tolerations, check_env_names, pod_tolerations, quantity
from lmops.config.reserved_env import RESERVED_ENV
from lmops.config.storage_access import storage_access_problem


# ---------------------------------------------------------------- stage 7: serve + deploy
class ServeConfig(Section):
    """The KServe model server (``lmops serve``): limits, micro-batching and where it listens."""

    host: str = "127.0.0.1"
    """Address the REST server binds (KServe itself always binds 0.0.0.0); 0.0.0.0 inside a container."""
    port: int = Field(8080, ge=0, le=65535)
    """REST port (0 = any free port, logged at start)."""
    model_name: str = Field("lmops", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    """Name in the protocol URLs (/v1/models/NAME:predict, /v2/models/NAME/infer, OpenAI "model")."""
    max_new_tokens: int = Field(256, ge=1)
    """Upper bound a request may ask for (max_new_tokens / max_tokens); above it is a 400."""
    default_max_new_tokens: int = Field(32, ge=1)
    """New tokens when a request names none."""
    max_prompt_tokens: int = Field(512, ge=1)
    """Longest prompt accepted, in tokens (prompt + new tokens must also fit the model's positions)."""
    max_batch_size: int = Field(16, ge=1)
    """Most requests generated together in one micro-batch."""
    grpc_port: int | None = Field(None, ge=0, le=65535)
    """KServe's v2 gRPC endpoint on this port, bound to ``host`` (None = gRPC off)."""
    # The request limits below apply to every protocol (v1, v2 REST and gRPC, OpenAI); lmops.serve.params
    # and lmops.serve.body_limits read them from here and nowhere else.
    max_prompts_per_request: int = Field(16, ge=1)
    """Most generations one request may ask for (prompts x OpenAI's ``n``); more is a 400."""
    max_prompt_bytes: int = Field(16384, ge=1)
    """Longest prompt in UTF-8 bytes, checked before tokenizing (so a huge prompt costs no tokenizer time)."""
    max_stop_strings: int = Field(4, ge=0)
    """Most stop strings per request (OpenAI's limit)."""
    max_stop_bytes: int = Field(256, ge=1)
    """Longest stop string in UTF-8 bytes."""
    max_logprobs: int = Field(5, ge=0)
    """Most alternatives per position a request may ask for (OpenAI ``logprobs`` / ``top_logprobs``)."""
    max_body_bytes: int = Field(1 << 20, ge=1024)
    """Largest request body in bytes; larger is a 413 before the body is read."""
    body_read_timeout_s: float = Field(10.0, gt=0)
    """A request body must arrive within this long; a slower one is a 408 and the connection is closed."""
    max_wait_ms: float = Field(0.0, ge=0, le=1000)
    """How long the first request of a batch waits for company when nothing else is queued. Requests that
    arrive while a batch runs join the next one without waiting, so batches form under load anyway; any
    wait is paid by every request to an idle server (bench/serve.py: 2 ms of wait added ~2 ms of HTTP
    overhead and did not raise 16-client throughput), hence 0."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where generation runs (auto = cuda when visible)."""
    threads: int | None = Field(None, ge=1)
    """torch intra-op threads (None = torch's default)."""
    warmup_prompt: str = Field("Hello", min_length=1)
    """Prompt of the warm-up generation that must succeed before the server reports ready."""
    cache_dir: str = ".state/serve-cache"
    """Where s3:// and models:/ model directories are downloaded before loading."""
    # Production controls, applied the same on every protocol (OpenAI, KServe v1, v2 REST and v2 gRPC):
    # lmops.serve.auth, lmops.serve.admission and lmops.serve.response_cache read them.
    api_key_file: str | None = None
    """File of API keys, one per line (blank lines and #-comments ignored), as vLLM's --api-key; the keys in
    $LMOPS_API_KEYS (comma-separated) are added. With any key, every inference route needs
    ``Authorization: Bearer KEY`` (gRPC: ``authorization`` metadata); health, readiness and /metrics stay open.
    Never put a key itself in a config: on Kubernetes it comes from a Secret (deploy.api_key_secret)."""
    rate_limit_requests_per_minute: int | None = Field(None, ge=1)
    """Requests per minute per API key (per client address without keys): a token bucket holding a minute's
    worth, refilled continuously; past it a 429 with Retry-After. None = no limit."""
    rate_limit_tokens_per_minute: int | None = Field(None, ge=1)
    """Prompt + generated tokens per minute per key or client, charged when a generation finishes; a client
    in debt gets 429 with Retry-After until the bucket refills. None = no limit."""
    max_queued_requests: int = Field(256, ge=1)
    """Most inference requests admitted at once (running or waiting for the batcher); one more is answered
    503 with Retry-After at once instead of waiting without bound."""
    response_cache_size: int = Field(256, ge=0)
    """Deterministic responses (greedy, or a fixed seed) kept in an LRU and answered again without the model;
    every such response carries a strong ETag and If-None-Match gives 304. 0 = no cache (ETags stay)."""

    @model_validator(mode="after")
    def _default_within_limit(self) -> "ServeConfig":
        if self.default_max_new_tokens > self.max_new_tokens:
            raise ValueError(f"default_max_new_tokens ({self.default_max_new_tokens}) is above max_new_tokens"
                             f" ({self.max_new_tokens})")
        return self


_CREDENTIAL_WORDS = ("SECRET", "PASSWORD", "TOKEN", "ACCESS_KEY", "CREDENTIAL", "SESSION_KEY", "API_KEY")


class DeployResources(Section):
    """Requests and limits of the predictor container (Kubernetes quantities)."""

    cpu: str = "1"
    """CPU request and limit, e.g. "500m", "2"."""
    memory: str = "2Gi"
    """Memory request and limit."""
    gpus: int = Field(0, ge=0)
    """nvidia.com/gpu count (0 = none)."""

    @field_validator("cpu", "memory", mode="before")
    @classmethod
    def _quantity(cls, v: Any) -> str:
        return quantity(v)


class ExampleConfig(Section):
    """The generation a deploy ends with: one request to the served model, printed in the run's summary."""

    prompt: str = Field("Return the", min_length=1)
    """A prompt from the corpus's own domain (the sample corpus is the standard library's docstrings)."""
    max_tokens: int = Field(32, ge=1)
    """New tokens to generate."""
    temperature: float = Field(0.7, ge=0, le=2)
    """Sampling temperature (0 = greedy, which loops on small models: sampling shows more of what they learned)."""
    top_p: float = Field(0.9, gt=0, le=1)
    """Nucleus sampling: the smallest set of tokens holding this much probability."""
    seed: int = Field(0, ge=0, le=2**63 - 1)
    """Sampling seed, so a re-run shows the same text."""

    def describe(self) -> str:
        """The settings as the summary prints them."""
        return f"temperature {self.temperature:g}, top_p {self.top_p:g}, seed {self.seed}, {self.max_tokens} tokens"


class DeployConfig(Section):
    """The deploy stage: a local server process, or an InferenceService on Kubernetes."""

    target: Literal["local", "kubernetes"] = "local"
    """local: start `lmops serve` as a subprocess; kubernetes: server-side apply an InferenceService."""
    model: str | None = None
    """Model URI (directory, s3://, models:/NAME@ALIAS); the CLI's --model overrides it."""
    ready_timeout_s: float = Field(120.0, gt=0)
    """How long to wait for the server (local) or the InferenceService (kubernetes) to be ready before failing."""
    smoke_prompt: str = Field("Hello", min_length=1)
    """Prompt of the smoke request sent once the server (or the URL in the InferenceService status) is ready."""
    example: ExampleConfig = Field(default_factory=ExampleConfig)
    name: str = Field("lmops-lm", pattern=r"^[a-z]([-a-z0-9]*[a-z0-9])?$", max_length=45)
    """InferenceService name (a DNS label; KServe appends suffixes, so at most 45 characters)."""
    namespace: str = "default"
    """Namespace of the InferenceService."""
    runtime: Literal["lmops", "huggingface"] = "lmops"
    """lmops: our image runs `lmops serve` (v1, v2, OpenAI); huggingface: KServe's HF runtime on the same dir."""
    image: str | None = None
    """Predictor image for runtime=lmops; None = the image setting (``image.*``): its cuda variant when
    resources.gpus > 0, else its cpu variant. Set only to serve from an image other than the pipeline's."""
    storage_uri: str | None = None
    """storageUri KServe's storage initializer downloads to /mnt/models; default: the model URI when it is
    s3:// (models:/ URIs are resolved by the lmops container itself through MLflow)."""
    service_account: str | None = None
    """ServiceAccount whose annotated Secret holds the S3 credentials (KServe's storage initializer reads it)."""
    s3_secret: str | None = None
    """Secret exposed to the lmops container with envFrom (AWS_* keys) for models:/ or direct s3:// reads."""
    api_key_secret: str | None = Field(None, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    """Secret holding the server's API keys (comma-separated) under ``api_key_secret_key``: the container's
    $LMOPS_API_KEYS comes from it (a secretKeyRef, never a literal). None = no keys (runtime=lmops only)."""
    api_key_secret_key: str = Field("api-keys", pattern=r"^[-._a-zA-Z0-9]+$")
    """The key inside ``api_key_secret``."""
    env: dict[str, str] = Field(default_factory=dict)
    """Extra plain environment variables; credentials are refused here (use service_account / s3_secret), and so
    are the names lmops sets itself (the container's env is a list keyed by name: a repeat is refused)."""
    node_selector: NodeSelector = Field(default_factory=dict)
    """nodeSelector of the predictor pods, e.g. {cloud.google.com/gke-accelerator: nvidia-l4}."""
    tolerations: Tolerations = None
    """Tolerations of the predictor pods (Kubernetes spelling); None = tolerate the nvidia.com/gpu taint when
    resources.gpus > 0, nothing otherwise."""
    resources: DeployResources = Field(default_factory=DeployResources)
    min_replicas: int = Field(1, ge=0)
    """Fewest predictor replicas (0 = scale to zero, serverless mode only)."""
    max_replicas: int = Field(1, ge=1)
    """Most predictor replicas."""
    canary_traffic_percent: int | None = Field(None, ge=0, le=100)
    """Percent of traffic to the new revision (None = all of it); the rollout moves it, then clears it."""

    @field_validator("env")
    @classmethod
    def _env_names(cls, v: dict[str, str]) -> dict[str, str]:
        check_env_names(v)
        taken = sorted(k for k in v if k in RESERVED_ENV)
        if taken:
            raise ValueError(f"{taken}: set by lmops itself ({RESERVED_ENV[taken[0]]}); a second entry with the"
                             " same name is refused by the API server (env is a list keyed by name)")
        return v

    def pod_tolerations(self) -> list[dict[str, Any]]:
        """The predictor's tolerations: the configured ones, else the GPU taint's when it asks for GPUs."""
        return pod_tolerations(self.tolerations, self.resources.gpus)

    @model_validator(mode="after")
    def _replicas_ordered(self) -> "DeployConfig":
        if self.storage_uri:
            problem = storage_access_problem(self, self.storage_uri)
            if problem:
                raise ValueError(problem)
        secret_like = [k for k in self.env if any(w in k.upper() for w in _CREDENTIAL_WORDS)]
        if secret_like:
            raise ValueError(f"env {secret_like} look like credentials; never inline them in a manifest: use"
                             " deploy.service_account (S3 for the storage initializer) or deploy.s3_secret")
        if self.api_key_secret and self.runtime != "lmops":
            raise ValueError("deploy.api_key_secret needs runtime=lmops (KServe's Hugging Face runtime has no API keys)")
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})")
        return self
