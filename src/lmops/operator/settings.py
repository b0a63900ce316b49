"""The operator's settings (from `lmops operator` flags and the environment)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lmops.config.image import ImageConfig


@dataclass
class Settings:
    tracking_uri: str | None = None
    """MLflow server for resources that do not name one ($MLFLOW_TRACKING_URI)."""
    poll_s: float = 10.0
    """Longest wait between two reconciles of a resource: the registry poll that is the truth when
    webhooks are lost or off."""
    probe_timeout_s: float = 30.0
    runs_dir: Path = Path(".state/operator-runs")
    """Where the local executor keeps one folder per run."""
    kfp_client_factory: Callable[[str], Any] | None = None
    staging_uri: str | None = None
    """Executor kubernetes: the s3:// prefix stage outputs pass through when a job names none ($LMOPS_STAGING_URI)."""
    s3_secret: str | None = None
    """Executor kubernetes: the Secret with the stage pods' S3 credentials ($LMOPS_STAGE_S3_CREDENTIALS_REF)."""
    s3_endpoint_url: str | None = None
    """Executor kubernetes: the stage pods' S3 endpoint ($LMOPS_STAGE_S3_ENDPOINT_URL; unset = AWS S3)."""
    webhook_host: str = "127.0.0.1"
    webhook_port: int | None = None
    """None: no webhook receiver (poll only)."""
    webhook_secret: str | None = None
    namespaces: list[str] = field(default_factory=list)
    api_key_secret: str | None = None
    """Secret the InferenceServices read their API keys from (key ``api-keys``; $LMOPS_SERVING_API_KEY_SECRET,
    the chart's serving.apiKeySecret); None = model servers without keys."""
    probe_api_key: str | None = None
    """The key the canary gates' quality probes send (the first of $LMOPS_API_KEYS, from the same Secret)."""
    image: ImageConfig = field(default_factory=ImageConfig)
    """The lmops images the InferenceServices run (a ModelDeployment's serving.image overrides it); the chart
    passes its own image setting ($LMOPS_IMAGE_REPOSITORY, $LMOPS_IMAGE_TAG, $LMOPS_IMAGE_PULL_POLICY)."""
