"""Knowledge distillation: a smaller student trained through the same Ray Train path as the teacher.

Objective per token (Hinton et al.): ``alpha * T^2 * KL(p_teacher^T || p_student^T) + (1 - alpha) * CE``,
where ``p^T`` is the softmax of logits / T. The T^2 keeps the soft term's gradients on the scale of the
hard one whatever T is. Validation still reports the plain LM loss (``fit``'s contract), so the
student's curve is comparable with the teacher's.

How it rides on the training stage without a second training loop: the driver builds the student's
initial weights (fresh, or the teacher's embedding and evenly spaced blocks — DistilBERT's recipe, a far
better start when the widths match), saves them as a HF directory and hands it to ``run_ray_training``
as ``model.pretrained``, with ``distillation_loss`` (bound to the teacher) as the loss factory: each
worker loads the teacher and swaps ``fit``'s objective for it. The trainer knows nothing of distillation. Checkpointing, resume, DDP and logging are the
training stage's own.
"""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, PreTrainedModel

from lmops.compress import CompressError
from lmops.compress.source import copy_side_files, load_fp32
from lmops.config import Config, DistillConfig, ModelConfig, sha256_json
from lmops.model import ModelConfigError, Vocab, build_model, count_params
from lmops.train.loop import LossFn


# ---------------------------------------------------------------- the objective
def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
            temperature: float, alpha: float) -> torch.Tensor:
    """alpha * T^2 * KL(teacher || student) at temperature T + (1 - alpha) * cross-entropy; means per token."""
    vocab = student_logits.size(-1)
    s = student_logits.float().reshape(-1, vocab)
    t = teacher_logits.float().reshape(-1, vocab)
    ce = F.cross_entropy(s, targets.reshape(-1))
    # kl_div(input=log q_student, target=log p_teacher) = sum p_teacher (log p_teacher - log q_student);
    # batchmean over the (tokens, vocab) view averages per token
    kl = F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1), log_target=True,
                  reduction="batchmean")
    return alpha * temperature**2 * kl + (1 - alpha) * ce


def distillation_loss(spec: dict[str, Any], device: torch.device) -> LossFn:
    """The training loss for ``fit``: loads the teacher (frozen, eval mode) onto ``device`` once."""
    teacher = AutoModelForCausalLM.from_pretrained(spec["teacher_dir"], attn_implementation="sdpa",
                                                   dtype=torch.float32).to(device).eval().requires_grad_(False)
    temperature, alpha = float(spec["temperature"]), float(spec["alpha"])

    def loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = model(input_ids=x, use_cache=False).logits
        with torch.no_grad():
            teacher_logits = teacher(input_ids=x, use_cache=False).logits
        return kd_loss(logits, teacher_logits, y, temperature, alpha)

    return loss


# ---------------------------------------------------------------- the student
def student_model_config(teacher: PreTrainedModel, dc: DistillConfig) -> ModelConfig:
    """The student's shape: the distill settings, the teacher's values where they are unset."""
    c = teacher.config
    n_head = dc.n_head or c.num_attention_heads
    n_kv_default = c.num_key_value_heads if n_head == c.num_attention_heads else n_head
    rope = (getattr(c, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    return ModelConfig(preset="custom", n_layer=dc.n_layer or max(1, c.num_hidden_layers // 2),
                       d_model=dc.d_model or c.hidden_size, n_head=n_head, n_kv_head=dc.n_kv_head or n_kv_default,
                       d_ff=dc.d_ff or c.intermediate_size, max_seq_len=c.max_position_embeddings, rope_theta=rope,
                       tie_embeddings=bool(c.tie_word_embeddings))


def init_student(teacher: PreTrainedModel, dc: DistillConfig, seed: int) -> tuple[PreTrainedModel, str]:
    """(student, how it was initialised). teacher_layers copies every tensor whose shape matches, blocks
    taken evenly spaced from the teacher's; a width change makes that impossible, so it falls back to random."""
    c = teacher.config
    torch.manual_seed(seed)
    try:
        student = build_model(student_model_config(teacher, dc), Vocab(c.vocab_size, c.eos_token_id, c.pad_token_id))
    except ModelConfigError as e:
        raise CompressError(f"compress.distill: {e}") from None
    if dc.init == "random":
        return student, "random"
    n_s, n_t = student.config.num_hidden_layers, c.num_hidden_layers
    picks = [round(i * (n_t - 1) / (n_s - 1)) for i in range(n_s)] if n_s > 1 else [0]
    source = teacher.state_dict()
    mapped = {}
    for key, value in student.state_dict().items():
        tkey = key
        parts = key.split(".")
        if "layers" in parts:  # model.layers.<i>.… -> model.layers.<picks[i]>.…
            at = parts.index("layers") + 1
            parts[at] = str(picks[int(parts[at])])
            tkey = ".".join(parts)
        if tkey not in source or source[tkey].shape != value.shape:
            return student, "random (teacher_layers impossible: the student's shapes differ from the teacher's)"
        mapped[key] = source[tkey]
    student.load_state_dict(mapped)
    student.tie_weights()
    return student, f"teacher_layers {picks}"


# ---------------------------------------------------------------- directory to directory, via Ray Train
def distill_dir(cfg: Config, checkpoint_dir: str | Path, tokens_dir: str | Path, out_dir: str | Path, *,
                teacher_digest: str, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train the student on ``tokens_dir`` against the teacher in ``checkpoint_dir``; save it to ``out_dir``."""
    from lmops.train.ray_train import run_ray_training

    dc = cfg.compress.distill
    checkpoint_dir = Path(checkpoint_dir).resolve()
    teacher = load_fp32(checkpoint_dir)
    student, how = init_student(teacher, dc, cfg.train.seed)
    tc = cfg.train.model_copy(update={"max_steps": dc.steps, "lr": dc.lr, "min_lr": min(cfg.train.min_lr, dc.lr),
                                      "warmup_steps": min(dc.warmup_steps, dc.steps - 1),
                                      "checkpoint_every": min(cfg.train.checkpoint_every, dc.steps),
                                      "eval_every": min(cfg.train.eval_every, dc.steps)})
    spec = {"teacher_dir": str(checkpoint_dir), "temperature": dc.temperature, "alpha": dc.alpha}
    # the run directory is named by what decides the result, so a re-run after a crash resumes it
    key = sha256_json({"teacher": teacher_digest, "distill": dc.model_dump(mode="json"),
                       "train": tc.model_dump(mode="json", exclude={"storage_path", "mlflow_tracking_uri"})})
    storage_path = cfg.train.storage_path or str((Path(cfg.workdir) / "ray").resolve())
    with tempfile.TemporaryDirectory(prefix="lmops-student-init-") as init_dir:
        student.save_pretrained(init_dir)
        copy_side_files(checkpoint_dir, init_dir, include_config=False)
        student_cfg = cfg.model_copy(update={"model": ModelConfig(pretrained=init_dir), "train": tc})
        final, state = run_ray_training(student_cfg, Path(tokens_dir), run_name=f"lmops-distill-{key[:16]}",
                                        storage_path=storage_path,
                                        loss_factory=functools.partial(distillation_loss, spec))
    try:
        shutil.copytree(final / "model", out_dir, dirs_exist_ok=True)
    finally:
        shutil.rmtree(final, ignore_errors=True)
    hist = state["history"]
    vals = [h["val_loss"] for h in hist if "val_loss" in h]
    train = [h["loss"] for h in hist if "loss" in h]
    summary = {"init": how, "steps": state["step"], "temperature": dc.temperature, "alpha": dc.alpha,
               "student_params": count_params(student), "teacher_params": count_params(teacher),
               "student_layers": student.config.num_hidden_layers, "teacher_layers": teacher.config.num_hidden_layers,
               "first_train_loss": train[0] if train else None, "final_train_loss": train[-1] if train else None,
               "first_val_loss": vals[0] if vals else None, "val_loss": vals[-1] if vals else None}
    (Path(out_dir) / "distill_metrics.json").write_text(json.dumps({**summary, "history": hist}, indent=1) + "\n")
    if log:
        log(f"[compress] student: {summary['student_layers']} of {summary['teacher_layers']} layers ({how}), "
            f"val loss {summary['first_val_loss']} -> {summary['val_loss']}")
    return summary
