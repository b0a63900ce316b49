"""Dynamic int8 quantization of the nn.Linear layers, persisted as int8 weights + scales.

Backend: ``torch.ao.quantization.quantize_dynamic`` (fbgemm int8 GEMMs on x86 CPUs). torchao 0.18 does
install and run on CPU with torch 2.13, but measured on the small preset shape at batch 1 x 128 tokens
its ``Int8DynamicActivationInt8WeightConfig`` ran at 0.80x fp32 prefill time against 0.39x for
quantize_dynamic (its CPU path dequantizes rather than calling an int8 kernel), and it is not a project
dependency. quantize_dynamic is deprecated but present in torch 2.13; swapping the backend only touches
``quantize_model`` and ``int8_format._int8_linear``.

On-disk format (written here, read by ``int8_format``, which has no lmops imports so that MLflow can ship
it with a registered int8 model; ``quantization.json`` marks it; the serving loader and ``lmops.evaluate`` dispatch on it):

- ``config.json``, ``generation_config.json``, tokenizer files: as in the fp32 checkpoint, so the module
  structure is rebuilt from the config alone;
- ``quantized.safetensors``: per quantized Linear ``NAME.weight_int8`` (int8 [out, in]),
  ``NAME.weight_scale`` (fp32 [out], or [1] per tensor), ``NAME.weight_zero_point`` (int8, same shape),
  ``NAME.bias`` (fp32, when the layer has one); every other parameter / persistent buffer (embedding,
  norms) in fp32 under its own name.

Loading puts the stored int8 values and scales straight back into the quantized modules: no fp32 weights
are needed and nothing is re-quantized, so a reloaded model computes exactly what the freshly quantized
one did. The file is not named ``model.safetensors`` on purpose: a plain ``from_pretrained`` must fail
loudly rather than load int8 tensors into fp32 layers with a warning.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.ao.nn.quantized.dynamic as nnqd
from safetensors.torch import save_file
from torch import nn

from lmops.compress import CompressError
from lmops.compress import int8_format
from lmops.compress.int8_format import FORMAT, MARKER, WEIGHTS, inside, is_quantized_dir, pack_weight, untie
from lmops.compress.source import copy_side_files, load_fp32
from lmops.config import Int8Config

__all__ = ["MARKER", "WEIGHTS", "is_quantized_dir", "load_quantized", "quantize_dir", "quantize_model",
           "save_quantized", "linear_weight_bytes"]


def load_quantized(path: str | Path) -> nn.Module:
    """The int8 model saved in ``path`` (CPU, eval mode); see ``int8_format.load_quantized``."""
    try:
        return int8_format.load_quantized(path)
    except int8_format.Int8FormatError as e:
        raise CompressError(str(e)) from None


def quantize_model(model: nn.Module, cfg: Int8Config) -> nn.Module:
    """A copy of ``model`` with its nn.Linear layers replaced by dynamic int8 ones (the input is untouched)."""
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig

    qconfig = per_channel_dynamic_qconfig if cfg.per_channel else default_dynamic_qconfig
    names = {n: qconfig for n in linear_names(model, cfg.include_lm_head)}
    if not names:
        raise CompressError("the model has no nn.Linear layers to quantize (GPT-2 style Conv1D models are not supported)")
    with warnings.catch_warnings():  # the deprecation notices of torch.ao say nothing actionable here
        warnings.simplefilter("ignore")
        q = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).cpu().eval(), names, dtype=torch.qint8)
    untie(q)
    return q


def linear_names(model: nn.Module, include_lm_head: bool) -> list[str]:
    """The nn.Linear modules to quantize, by qualified name."""
    head = _output_name(model)
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and (include_lm_head or n != head)]


def _output_name(model: nn.Module) -> str | None:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if get else None
    return next((n for n, m in model.named_modules() if m is head), None) if head is not None else None


# ---------------------------------------------------------------- save / load
def save_quantized(qmodel: nn.Module, out_dir: str | Path, source_dir: str | Path, cfg: Int8Config) -> Path:
    """Write the int8 model as described in the module docstring; side files come from ``source_dir``."""
    out = Path(out_dir)
    copy_side_files(source_dir, out)  # config.json as trained: the loader rebuilds this exact structure
    tensors: dict[str, torch.Tensor] = {}
    quantized: list[str] = []
    seen: set[int] = set()
    for name, module in qmodel.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, nnqd.Linear):
            quantized.append(name)
            w, b = module._weight_bias()
            tensors.update(pack_weight(prefix, w))
            if b is not None:
                tensors[f"{prefix}bias"] = b.detach().contiguous()
            continue
        if inside(name, quantized):
            continue
        own = list(module.named_parameters(recurse=False)) + [
            (n, b) for n, b in module.named_buffers(recurse=False) if n not in module._non_persistent_buffers_set]
        for pname, t in own:
            if t is None or id(t) in seen:  # a tied tensor is stored once; the rebuilt model re-ties it
                continue
            seen.add(id(t))
            tensors[f"{prefix}{pname}"] = t.detach().float().contiguous() if t.is_floating_point() else t.detach().contiguous()
    save_file(tensors, str(out / WEIGHTS), metadata={"format": FORMAT})
    info = {"scheme": "int8", "format": FORMAT, "weights": WEIGHTS, "method": "torch.ao.quantization.quantize_dynamic",
            "activations": "int8, quantized per call (dynamic)", "per_channel": cfg.per_channel,
            "include_lm_head": cfg.include_lm_head, "modules": quantized, "torch": torch.__version__}
    (out / MARKER).write_text(json.dumps(info, indent=2) + "\n")
    return out


# ---------------------------------------------------------------- directory to directory
def quantize_dir(checkpoint_dir: str | Path, out_dir: str | Path, cfg: Int8Config) -> dict[str, Any]:
    """fp32 HF directory -> int8 directory; returns linear-weight bytes before and after."""
    fp32 = load_fp32(checkpoint_dir)
    q = quantize_model(fp32, cfg)
    save_quantized(q, out_dir, checkpoint_dir, cfg)
    before, after = linear_weight_bytes(fp32, cfg.include_lm_head), linear_weight_bytes(q, cfg.include_lm_head)
    return {"linear_weight_bytes_fp32": before, "linear_weight_bytes": after, "linear_weight_ratio": after / before,
            "quantized_layers": len(linear_names(fp32, cfg.include_lm_head))}


def linear_weight_bytes(model: nn.Module, include_lm_head: bool = True) -> int:
    """Bytes of the linear layers' weights and biases as held in memory: fp32 4 bytes per weight, int8 1 byte
    plus its scales and zero points. A tied fp32 head is counted (it is a matmul's operand either way)."""
    head = _output_name(model)
    total = 0
    for name, m in model.named_modules():
        if name == head and not include_lm_head:
            continue
        if isinstance(m, nnqd.Linear):
            w, b = m._weight_bias()
            packed = pack_weight("", w)
            total += sum(t.numel() * t.element_size() for t in packed.values())
            total += 0 if b is None else b.numel() * b.element_size()
        elif isinstance(m, nn.Linear):
            total += sum(p.numel() * p.element_size() for p in m.parameters(recurse=False))
    return total
