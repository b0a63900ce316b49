"""Training FLOPs per token, a table of peak device FLOP/s, and model FLOPs utilisation (MFU).

FLOPs per trained token follow the PaLM paper (appendix B) and nanoGPT's ``estimate_mfu``::

    6 * N  +  12 * L * H * Q * T

- ``6 N``: forward (2 FLOPs per weight per token) plus backward (4). N counts the weights that take part
  in a matrix multiply: every parameter except the input-embedding lookup (a gather, no FLOPs). With tied
  embeddings the shared matrix still counts once, because the LM head multiplies by it. Norm weights
  are included (negligible).
- ``12 L H Q T``: attention scores and the weighted sum over the context (QK^T and AV, 2 FLOPs per
  multiply-add, x3 for forward + backward) with L layers, H heads of size Q and sequence length T.
  Causal masking would halve it in principle; the convention (and SDPA kernels' cost) counts it whole.

MFU = achieved FLOP/s / peak FLOP/s. Peaks are the vendors' dense (no 2:4 sparsity) tensor-core
figures for bf16/fp16, and the non-tensor-core figure for fp32 (PyTorch keeps TF32 off for matmuls by
default). A device not in the table — CPUs included — has no MFU: ``mfu`` returns None rather than guess.
"""

from __future__ import annotations

import torch

TFLOPS = 1e12

# (substring of torch.cuda.get_device_name(), label, {dtype: peak FLOP/s}); first match wins, so more
# specific names come first ("H100 PCIe" before "H100", "A10G" before "A10").
PEAK_FLOPS: list[tuple[str, str, dict[str, float]]] = [
    ("GH200", "GH200", {"bfloat16": 989 * TFLOPS, "float16": 989 * TFLOPS, "float32": 67 * TFLOPS}),
    ("H200 NVL", "H200 NVL", {"bfloat16": 835 * TFLOPS, "float16": 835 * TFLOPS, "float32": 60 * TFLOPS}),
    ("H200", "H200 SXM", {"bfloat16": 989 * TFLOPS, "float16": 989 * TFLOPS, "float32": 67 * TFLOPS}),
    ("H100 NVL", "H100 NVL", {"bfloat16": 835 * TFLOPS, "float16": 835 * TFLOPS, "float32": 60 * TFLOPS}),
    ("H100 PCIe", "H100 PCIe", {"bfloat16": 756 * TFLOPS, "float16": 756 * TFLOPS, "float32": 51 * TFLOPS}),
    ("H100", "H100 SXM", {"bfloat16": 989 * TFLOPS, "float16": 989 * TFLOPS, "float32": 67 * TFLOPS}),
    ("A100", "A100", {"bfloat16": 312 * TFLOPS, "float16": 312 * TFLOPS, "float32": 19.5 * TFLOPS}),
    ("L40S", "L40S", {"bfloat16": 362 * TFLOPS, "float16": 362 * TFLOPS, "float32": 91.6 * TFLOPS}),
    ("L40", "L40", {"bfloat16": 181 * TFLOPS, "float16": 181 * TFLOPS, "float32": 90.5 * TFLOPS}),
    ("L4", "L4", {"bfloat16": 121 * TFLOPS, "float16": 121 * TFLOPS, "float32": 30.3 * TFLOPS}),
    # A10G: AWS's variant; NVIDIA publishes no datasheet. Commonly reported: 70 bf16 / 35 fp32.
    ("A10G", "A10G", {"bfloat16": 70 * TFLOPS, "float16": 70 * TFLOPS, "float32": 35 * TFLOPS}),
    ("A10", "A10", {"bfloat16": 125 * TFLOPS, "float16": 125 * TFLOPS, "float32": 31.2 * TFLOPS}),
]

_DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}


def flops_per_token(n_params: int, n_layer: int, n_head: int, head_dim: int, seq_len: int) -> float:
    """Training FLOPs per token: 6N + 12·L·H·Q·T (see the module docstring for what N counts)."""
    return 6.0 * n_params + 12.0 * n_layer * n_head * head_dim * seq_len


def model_flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    """flops_per_token for a HF decoder model (reads layers/heads from its config)."""
    cfg = model.config
    n_head = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
    return flops_per_token(matmul_params(model), cfg.num_hidden_layers, n_head, head_dim, seq_len)


def matmul_params(model: torch.nn.Module) -> int:
    """N: parameters that take part in a matmul = all (shared once) minus an *untied* input embedding."""
    total = sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if head is None or head.weight is not emb.weight:
        total -= emb.weight.numel()
    return total


def peak_flops(device_name: str, dtype: str | torch.dtype) -> float | None:
    """Peak dense FLOP/s of one device at a dtype, or None when the device or dtype is not in the table."""
    if isinstance(dtype, torch.dtype):
        dtype = _DTYPE_NAMES.get(dtype, str(dtype))
    for pattern, _label, peaks in PEAK_FLOPS:
        if pattern.lower() in device_name.lower():
            return peaks.get(dtype)
    return None


def mfu(tokens_per_s: float, flops_per_token: float, device_name: str, dtype: str | torch.dtype,
        n_devices: int = 1) -> float | None:
    """Model FLOPs utilisation in [0, 1] (tokens_per_s summed over n_devices), or None if the peak is unknown."""
    peak = peak_flops(device_name, dtype)
    if peak is None or n_devices < 1:
        return None
    return tokens_per_s * flops_per_token / (peak * n_devices)


def device_name(device: torch.device | str) -> str:
    """The name the peak table is matched against: the CUDA product name, else the device type."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type
