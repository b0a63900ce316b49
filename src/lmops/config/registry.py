"""Stage 6: the MLflow model registry."""

from __future__ import annotations


from pydantic import Field

from lmops.config.base import Section


# ---------------------------------------------------------------- stage 6: register
class RegistryConfig(Section):
    tracking_uri: str | None = None
    """MLflow server (tracking and model registry); default: $MLFLOW_TRACKING_URI."""
    model_name: str = "lmops-lm"
    """Registered model name: letters, digits, '.', '_' and '-' (it also names Kubernetes objects)."""
    experiment: str | None = None
    """MLflow experiment of the versions' source runs: where their training runs are found and compress runs
    are recorded; default: ``train.experiment`` (where the train stage logs its runs)."""
    candidate_alias: str = "candidate"
    """Alias set on the best passing version of a registration."""
    champion_alias: str = "champion"
    """Alias of the served version: its metrics are the gate baseline when no baseline is given."""
    rank_by: str = "perplexity"
    """Metric that picks the best passing version for the candidate alias (direction as in lmops.gates)."""
    register_failed: bool = True
    """Also register variants that failed their gates (tagged lmops.gate.passed=false; promote refuses them)."""
    connect_attempts: int = Field(4, ge=1, le=20)
    """Health-check attempts before the server is declared unreachable."""
    connect_backoff_s: float = Field(0.5, gt=0, le=30)
    """First wait between attempts; doubles after each one."""
    history_limit: int = Field(50, ge=2, le=1000)
    """Alias-history entries kept per alias (a tag on the registered model)."""
    pip_requirements: list[str] | None = None
    """Requirements recorded with the MLflow model; default: the installed torch, transformers,
    tokenizers, safetensors and mlflow versions, pinned."""
