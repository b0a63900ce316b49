"""Dynamic int8 quantization of the nn.Linear layers, persisted as int8 weights + scales.

Backend: ``torch.ao.quantization.quantize_dynamic`` (fbgemm int8 GEMMs on x86 CPUs). torchao 0.18 does
install and run on CPU with torch 2.13, but measured on the small preset shape at batch 1 x 128 tokens
its ``Int8DynamicActivationInt8WeightConfig`` ran at 0.80x fp32 prefill time against 0.39x for
quantize_dynamic (its CPU path dequantizes rather than calling an int8 kernel), and it is not a project
dependency. quantize_dynamic is deprecated but present in torch 2.13; swapping the backend only touches
``quantize_model`` and ``_int8_linear``.

On-disk format (``quantization.json`` marks it; the serving loader and ``lmops.evaluate`` dispatch on it):

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
from safetensors.torch import load_file, save_file
from torch import nn

from lmops.compress import CompressError
from lmops.compress.source import copy_side_files, load_fp32
from lmops.config import Int8Config

MARKER = "quantization.json"
WEIGHTS = "quantized.safetensors"
FORMAT = "lmops-int8-dynamic-v1"


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
    _untie(q)
    return q


def linear_names(model: nn.Module, include_lm_head: bool) -> list[str]:
    """The nn.Linear modules to quantize, by qualified name."""
    head = _output_name(model)
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and (include_lm_head or n != head)]


def _output_name(model: nn.Module) -> str | None:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if get else None
    return next((n for n, m in model.named_modules() if m is head), None) if head is not None else None


def _untie(model: nn.Module) -> None:
    """An int8 LM head no longer shares the embedding tensor: stop transformers from re-tying it (it would
    assign a Parameter over the quantized module's ``weight()`` method)."""
    head = getattr(model, "get_output_embeddings", lambda: None)()
    if isinstance(head, nnqd.Linear) and getattr(model, "config", None) is not None:
        model.config.tie_word_embeddings = False


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
            tensors.update(_pack_weight(prefix, w))
            if b is not None:
                tensors[f"{prefix}bias"] = b.detach().contiguous()
            continue
        if _inside(name, quantized):
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


def _pack_weight(prefix: str, w: torch.Tensor) -> dict[str, torch.Tensor]:
    if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        scale, zp = w.q_per_channel_scales().float(), w.q_per_channel_zero_points()
    else:
        scale, zp = torch.tensor([w.q_scale()], dtype=torch.float32), torch.tensor([w.q_zero_point()])
    # a qint8 zero point lies in [-128, 127]: one byte each instead of int64's eight
    return {f"{prefix}weight_int8": w.int_repr().contiguous(), f"{prefix}weight_scale": scale.contiguous(),
            f"{prefix}weight_zero_point": zp.to(torch.int8).contiguous()}


def _inside(name: str, parents: list[str]) -> bool:
    return any(name.startswith(p + ".") for p in parents)


def is_quantized_dir(path: str | Path) -> bool:
    return (Path(path) / MARKER).is_file()


def load_quantized(path: str | Path) -> nn.Module:
    """Rebuild the module structure from config.json and load the stored int8 weights (CPU, eval mode)."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    path = Path(path)
    info = _read_marker(path)
    weights = path / info.get("weights", WEIGHTS)
    if not weights.is_file():
        raise CompressError(f"{weights}: int8 weights named by {path / MARKER} are missing")
    try:
        tensors = load_file(str(weights))
        config = AutoConfig.from_pretrained(path)
    except Exception as e:
        raise CompressError(f"{path}: unreadable int8 model: {type(e).__name__}: {e}") from e
    # the structure only: the random init is overwritten below, so skip its cost where transformers allows
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    modules = list(info["modules"])
    for name in modules:
        _set_module(model, name, _int8_linear(model.get_submodule(name), name, tensors, path))
    _untie(model)
    # copied tensor by tensor: load_state_dict would also ask the int8 modules for fp32-era keys
    targets = {n: t for n, t in _persistent_tensors(model) if not _inside(n, modules)}
    missing = sorted(set(targets) - set(tensors))
    if missing:
        raise CompressError(f"{weights}: tensors missing for {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    with torch.no_grad():
        for n, t in targets.items():
            if tuple(tensors[n].shape) != tuple(t.shape):
                raise CompressError(f"{weights}: {n} has shape {tuple(tensors[n].shape)}, {path / 'config.json'}"
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
        raise CompressError(f"{path}: no {MARKER} — not an int8 model directory") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CompressError(f"{path / MARKER}: not valid JSON: {e}") from None
    if info.get("format") != FORMAT:
        raise CompressError(f"{path / MARKER}: format {info.get('format')!r}, this lmops reads {FORMAT!r}")
    return info


def _int8_linear(lin: nn.Module, name: str, tensors: dict[str, torch.Tensor], path: Path) -> nnqd.Linear:
    try:
        q, scale, zp = (tensors[f"{name}.weight_{k}"] for k in ("int8", "scale", "zero_point"))
    except KeyError as e:
        raise CompressError(f"{path / WEIGHTS}: no {e.args[0]} for the quantized layer {name}") from None
    if not isinstance(lin, nn.Linear) or tuple(q.shape) != (lin.out_features, lin.in_features):
        raise CompressError(f"{path / WEIGHTS}: {name} has shape {tuple(q.shape)}, config.json builds {lin}")
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
            packed = _pack_weight("", w)
            total += sum(t.numel() * t.element_size() for t in packed.values())
            total += 0 if b is None else b.numel() * b.element_size()
        elif isinstance(m, nn.Linear):
            total += sum(p.numel() * p.element_size() for p in m.parameters(recurse=False))
    return total
