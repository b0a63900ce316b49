"""Stage 3: the model and its training."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lmops.config.base import Section


# ---------------------------------------------------------------- stage 3: model + train
class ModelConfig(Section):
    preset: Literal["tiny", "small", "gpt2-124m", "custom"] = "tiny"
    """Named size; 'custom' uses the fields below as given. A preset fills fields left unset."""
    pretrained: str | None = None
    """A Hugging Face model directory (local or s3://) to fine-tune instead of building from config."""
    n_layer: int | None = Field(None, ge=1)
    """Transformer blocks."""
    n_head: int | None = Field(None, ge=1)
    """Attention heads."""
    n_kv_head: int | None = Field(None, ge=1)
    """Key/value heads (grouped-query attention when below n_head)."""
    d_model: int | None = Field(None, ge=8)
    """Hidden size."""
    d_ff: int | None = Field(None, ge=8)
    """MLP intermediate size."""
    max_seq_len: int | None = Field(None, ge=8)
    """Maximum positions (rope)."""
    rope_theta: float = Field(10000.0, gt=0)
    """RoPE base."""
    tie_embeddings: bool = True
    """Share the input embedding and the LM head."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Attention dropout."""


class TrainConfig(Section):
    seed: int = 1337
    """Seeds model init and batch sampling."""
    max_steps: int = Field(200, ge=1)
    """Optimizer steps."""
    micro_batch_size: int = Field(8, ge=1)
    """Sequences per worker per micro-step."""
    grad_accum: int = Field(1, ge=1)
    """Micro-steps per optimizer step."""
    block_size: int = Field(128, ge=8)
    """Tokens per training sequence."""
    lr: float = Field(1e-3, gt=0)
    """Peak learning rate."""
    min_lr: float = Field(1e-4, ge=0)
    """Learning rate at the end of the cosine decay."""
    warmup_steps: int = Field(20, ge=0)
    """Linear warm-up steps."""
    weight_decay: float = Field(0.1, ge=0)
    """AdamW weight decay (matrices only)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    grad_clip: float = Field(1.0, ge=0)
    """Clip the global gradient norm to this (0 = off)."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Autocast dtype: auto = bf16 on CUDA, fp32 on CPU."""
    compile: bool = False
    """torch.compile the model."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the single-process loop runs; Ray workers follow use_gpu."""
    log_every: int = Field(10, ge=1)
    """Steps between log lines."""
    eval_every: int = Field(50, ge=1)
    """Steps between validation-loss estimates."""
    eval_batches: int = Field(10, ge=1)
    """Batches per validation-loss estimate."""
    num_workers: int = Field(1, ge=1)
    """Ray Train workers (DDP ranks)."""
    use_gpu: bool = False
    """One GPU per worker."""
    resources_per_worker: dict[str, float] = Field(default_factory=dict)
    """Extra Ray resources per worker, e.g. {CPU: 4}."""
    checkpoint_every: int = Field(100, ge=1)
    """Steps between checkpoints."""
    keep_checkpoints: int = Field(2, ge=1)
    """Checkpoints kept (the latest K)."""
    resume: Literal["auto", "never"] = "auto"
    """auto: continue from the latest complete checkpoint of the same run."""
    max_failures: int = Field(2, ge=0)
    """Ray Train restarts of failed workers before the run fails."""
    wait_for_resources_s: float = Field(120, ge=0)
    """On this machine's Ray (which cannot grow), how long to wait for CPUs/GPUs that another run or actor
    holds before failing with what holds them. A cluster's Ray waits for its autoscaler instead."""
    storage_path: str | None = None
    """Ray checkpoint storage (local dir or s3://); default: <workdir>/ray."""
    mlflow_tracking_uri: str | None = None
    """Log params/metrics to this MLflow server; default: $MLFLOW_TRACKING_URI, else no tracking."""
    experiment: str = "lmops"
    """MLflow experiment name."""
