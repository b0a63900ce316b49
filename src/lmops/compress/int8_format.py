"""The lmops int8 on-disk format, read back: ``load_quantized(dir) -> model``. No lmops imports on purpose.

The registry logs this file with every int8 model (MLflow ``code_paths``), so
``mlflow.pyfunc.load_model("models:/NAME@ALIAS")`` of an int8 version needs only torch, transformers and
safetensors, like an fp32 one. ``lmops.compress.quantize`` writes the format (see its docstring) and
re-exports the loader with lmops' error type.

- ``quantization.json`` marks the directory and lists the quantized modules;
- ``quantized.safetensors`` holds per quantized Linear ``NAME.weight_int8``, ``NAME.weight_scale``,
  ``NAME.weight_zero_point`` (and ``NAME.bias``), every other persistent tensor in fp32 under its own name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.ao.nn.quantized.dynamic as nnqd
from safetensors.torch import load_file
from torch import nn

MARKER = "quantization.json"
WEIGHTS = "quantized.safetensors"
FORMAT = "lmops-int8-dynamic-v1"


class Int8FormatError(ValueError):
    """An int8 directory that cannot be read back; the message names the file."""


def pack_weight(prefix: str, w: torch.Tensor) -> dict[str, torch.Tensor]:
    """A quantized weight as the three tensors stored for it (the writer and the size count use this)."""
    if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        scale, zp = w.q_per_channel_scales().float(), w.q_per_channel_zero_points()
    else:
        scale, zp = torch.tensor([w.q_scale()], dtype=torch.float32), torch.tensor([w.q_zero_point()])
    # a qint8 zero point lies in [-128, 127]: one byte each instead of int64's eight
    return {f"{prefix}weight_int8": w.int_repr().contiguous(), f"{prefix}weight_scale": scale.contiguous(),
            f"{prefix}weight_zero_point": zp.to(torch.int8).contiguous()}


def inside(name: str, parents: list[str]) -> bool:
    return any(name.startswith(p + ".") for p in parents)


def untie(model: nn.Module) -> None:
    """An int8 LM head no longer shares the embedding tensor: stop transformers from re-tying it (it would
    assign a Parameter over the quantized module's ``weight()`` method)."""
    head = getattr(model, "get_output_embeddings", lambda: None)()
    if isinstance(head, nnqd.Linear) and getattr(model, "config", None) is not None:
        model.config.tie_word_embeddings = False


def is_quantized_dir(path: str | Path) -> bool:
    return (Path(path) / MARKER).is_file()


def load_quantized(path: str | Path) -> nn.Module:
    """Rebuild the module structure from config.json and load the stored int8 weights (CPU, eval mode)."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    path = Path(path)
    info = _read_marker(path)
    weights = path / info.get("weights", WEIGHTS)
    if not weights.is_file():
        raise Int8FormatError(f"{weights}: int8 weights named by {path / MARKER} are missing")
    try:
        tensors = load_file(str(weights))
        config = AutoConfig.from_pretrained(path)
    except Exception as e:
        raise Int8FormatError(f"{path}: unreadable int8 model: {type(e).__name__}: {e}") from e
    # the structure only: the random init is overwritten below, so skip its cost where transformers allows
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    modules = list(info["modules"])
    for name in modules:
        _set_module(model, name, _int8_linear(model.get_submodule(name), name, tensors, path))
    untie(model)
    # copied tensor by tensor: load_state_dict would also ask the int8 modules for fp32-era keys
    targets = {n: t for n, t in _persistent_tensors(model) if not inside(n, modules)}
    missing = sorted(set(targets) - set(tensors))
    if missing:
        raise Int8FormatError(f"{weights}: tensors missing for {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    with torch.no_grad():
        for n, t in targets.items():
            if tuple(tensors[n].shape) != tuple(t.shape):
                raise Int8FormatError(f"{weights}: {n} has shape {tuple(tensors[n].shape)}, {path / 'config.json'}"
                                    f" builds {tuple(t.shape)}")
            t.copy_(tensors[n])
    model.tie_weights()  # an fp32 head left tied (include_lm_head=false) shares the loaded embedding
    if (path / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(path)
    return model.eval()


def _persistent_tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Parameters (a tied one once) and persistent buffers, by qualified name."""
    out: list[tuple[str, torch.Tensor]] = list(model.named_parameters())
    for mname, m in model.named_modules():
        for bname, b in m.named_buffers(recurse=False):
            if b is not None and bname not in m._non_persistent_buffers_set:
                out.append((f"{mname}.{bname}" if mname else bname, b))
    return out


def _read_marker(path: Path) -> dict[str, Any]:
    try:
        info = json.loads((path / MARKER).read_text())
    except FileNotFoundError:
        raise Int8FormatError(f"{path}: no {MARKER} — not an int8 model directory") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise Int8FormatError(f"{path / MARKER}: not valid JSON: {e}") from None
    if info.get("format") != FORMAT:
        raise Int8FormatError(f"{path / MARKER}: format {info.get('format')!r}, this lmops reads {FORMAT!r}")
    return info


def _int8_linear(lin: nn.Module, name: str, tensors: dict[str, torch.Tensor], path: Path) -> nnqd.Linear:
    try:
        q, scale, zp = (tensors[f"{name}.weight_{k}"] for k in ("int8", "scale", "zero_point"))
    except KeyError as e:
        raise Int8FormatError(f"{path / WEIGHTS}: no {e.args[0]} for the quantized layer {name}") from None
    if not isinstance(lin, nn.Linear) or tuple(q.shape) != (lin.out_features, lin.in_features):
        raise Int8FormatError(f"{path / WEIGHTS}: {name} has shape {tuple(q.shape)}, config.json builds {lin}")
    if scale.numel() == 1:
        qw = torch._make_per_tensor_quantized_tensor(q, float(scale), int(zp))
    else:
        qw = torch._make_per_channel_quantized_tensor(q, scale.double(), zp.long(), 0)
    out = nnqd.Linear(lin.in_features, lin.out_features, bias_=lin.bias is not None, dtype=torch.qint8)
    out.set_weight_bias(qw, tensors.get(f"{name}.bias"))
    return out


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)
