"""Stage 5: compression variants and their quality budgets."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from lmops.config.base import Section
from lmops.config.evaluate import GateRule


# ---------------------------------------------------------------- stage 5: compress
class Int8Config(Section):
    """Dynamic int8 quantization of the nn.Linear layers (weights int8 on disk, activations quantized per call)."""

    enabled: bool = True
    """Produce the int8/ variant."""
    per_channel: bool = True
    """One scale per output row instead of one per matrix: a little more storage, much less rounding error."""
    include_lm_head: bool = True
    """Quantize the LM head too (the largest matmul of a small-vocabulary model's prefill). A tied head then
    gets an int8 copy of the embedding; the input embedding itself stays fp32."""


class PruneConfig(Section):
    """Global magnitude pruning of the transformer's linear weights (embeddings and LM head are left dense)."""

    enabled: bool = True
    """Produce the pruned/ variant."""
    sparsity: float = Field(0.3, ge=0, lt=1)
    """Fraction of the prunable weights set to zero, chosen by smallest |w| across all of them at once."""
    recovery_steps: int = Field(30, ge=0)
    """Fine-tune steps after pruning (0 = none); the mask is re-applied after every optimizer step."""
    recovery_lr: float = Field(3e-4, gt=0)
    """Constant learning rate of the recovery fine-tune (small: the model is already trained)."""


class DistillConfig(Section):
    """A smaller student trained on the teacher's softened distribution plus the LM loss, through Ray Train."""

    enabled: bool = True
    """Produce the student/ variant."""
    n_layer: int | None = Field(None, ge=1)
    """Student blocks; None = half the teacher's (at least 1)."""
    d_model: int | None = Field(None, ge=8)
    """Student hidden size; None = the teacher's."""
    n_head: int | None = Field(None, ge=1)
    """Student attention heads; None = the teacher's."""
    n_kv_head: int | None = Field(None, ge=1)
    """Student key/value heads; None = the student's n_head when it differs from the teacher's, else the teacher's."""
    d_ff: int | None = Field(None, ge=8)
    """Student MLP size; None = the teacher's."""
    init: Literal["teacher_layers", "random"] = "teacher_layers"
    """teacher_layers: copy the embedding and evenly spaced blocks of the teacher (needs the teacher's width;
    falls back to random when the shapes differ); random: a fresh init seeded by train.seed."""
    temperature: float = Field(2.0, gt=0)
    """Softmax temperature T of both distributions in the KL term."""
    alpha: float = Field(0.5, ge=0, le=1)
    """Weight of T^2 * KL(teacher || student); the LM cross-entropy gets 1 - alpha."""
    steps: int = Field(200, ge=1)
    """Optimizer steps of the student's training (the other train.* settings are the teacher's)."""
    lr: float = Field(2e-3, gt=0)
    """Peak learning rate of the student."""
    warmup_steps: int = Field(10, ge=0)
    """Linear warm-up steps of the student."""


_COMPRESS_VARIANTS = ("int8", "pruned", "student")


def _default_compress_gates() -> dict[str, dict[str, GateRule]]:
    # budgets relative to the fp32 model the variants were made from (the gate's baseline)
    return {"int8": {"perplexity": GateRule(max_ratio=1.02)},
            "pruned": {"perplexity": GateRule(max_ratio=1.10)},
            "student": {"perplexity": GateRule(max_ratio=1.35)}}


class CompressConfig(Section):
    """Stage 5: checkpoint/ -> int8/, pruned/, student/, each scored by lmops.evaluate and gated against fp32."""

    int8: Int8Config = Field(default_factory=Int8Config)
    prune: PruneConfig = Field(default_factory=PruneConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    gates: dict[str, dict[str, GateRule]] = Field(default_factory=_default_compress_gates)
    """Per variant (int8, pruned, student), lmops.gates rules of its eval.json against the fp32 model's;
    a variant that fails may not be registered as passing. A variant given here replaces that variant's
    default rules; variants not given keep their defaults (``int8: {}`` removes int8's gate)."""

    @field_validator("gates", mode="before")
    @classmethod
    def _over_defaults(cls, given: Any) -> Any:
        return {**_default_compress_gates(), **given} if isinstance(given, dict) else given

    @model_validator(mode="after")
    def _known_variants(self) -> "CompressConfig":
        unknown = sorted(set(self.gates) - set(_COMPRESS_VARIANTS))
        if unknown:
            raise ValueError(f"gates for unknown variant(s) {unknown}; variants: {', '.join(_COMPRESS_VARIANTS)}")
        return self
