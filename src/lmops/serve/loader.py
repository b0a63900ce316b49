"""Model URIs -> a local HF model directory -> (model, tokenizer), in one place.

URIs: a local directory, ``s3://bucket/prefix`` (lmops.storage), or ``models:/NAME@ALIAS`` /
``models:/NAME/VERSION`` (lmops.registry, imported only for those so serving needs no MLflow).

Variants plug in by a marker file: a directory holding ``quantization.json`` is loaded by
``lmops.compress.quantize.load_quantized(path) -> PreTrainedModel`` (the compress stage owns the
format, so the fp32 and int8 readers can never drift apart); anything else is a plain HF directory.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from lmops.errors import LmopsError

log = logging.getLogger("lmops.serve")

QUANTIZATION_MARKER = "quantization.json"


class ModelLoadError(LmopsError, RuntimeError):
    """A model URI that cannot be resolved or a directory that cannot be loaded; says which and why."""


@dataclass
class LoadedModel:
    model: "object"  # transformers.PreTrainedModel (kept loose: int8 variants are still nn.Modules)
    tokenizer: "object"  # transformers.PreTrainedTokenizerBase
    path: Path
    variant: str  # "fp32" | "int8" | ... (the quantization.json "scheme", when present)
    max_positions: int


def resolve_model_uri(uri: str, cache_dir: str | Path) -> Path:
    """A local directory holding the model for ``uri`` (downloaded into cache_dir when remote)."""
    from lmops import storage

    if uri.startswith("models:/"):
        # Lazy: only registry URIs need MLflow installed and reachable.
        from lmops.registry import download_model

        return Path(download_model(uri, _cache_slot(uri, cache_dir)))
    if storage.is_s3(uri):
        return storage.download_dir(uri, _cache_slot(uri, cache_dir))
    path = Path(uri).expanduser()
    if not path.is_dir():
        raise ModelLoadError(f"{uri}: model directory not found")
    return path


def dir_digest(path: str | Path) -> str:
    """The served version in ETags: two directories with the same files are the same version, wherever they
    were loaded from. An lmops stage output's manifest already holds that digest (over every file's sha256);
    reading it costs nothing, where hashing a billion-parameter model's files again would cost a minute of
    start-up. Other directories: sha256 over the file names and contents."""
    from lmops.manifest import MANIFEST, ManifestError, read_manifest

    path = Path(path)
    if (path / MANIFEST).is_file():
        try:
            return read_manifest(path).digest[:16]
        except ManifestError:
            pass  # not a manifest we can read: hash the files
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()[:16]


def _cache_slot(uri: str, cache_dir: str | Path) -> Path:
    # one folder per URI, so two models never mix files (aliases move: registry re-downloads are cheap)
    return Path(cache_dir) / hashlib.sha256(uri.encode()).hexdigest()[:16]


def load_model_dir(path: str | Path, device: str = "cpu") -> LoadedModel:
    """Load a HF causal-LM directory (or a marked variant of one) for inference on ``device``."""
    import json

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path}: not a Hugging Face model directory (no config.json)")
    marker = path / QUANTIZATION_MARKER
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        if marker.is_file():
            variant = str(json.loads(marker.read_text()).get("scheme", "int8"))
            try:
                from lmops.compress.quantize import load_quantized
            except ImportError as e:
                raise ModelLoadError(f"{path}: has {QUANTIZATION_MARKER} but lmops.compress.quantize is not "
                                     f"available to load it ({e})") from None
            model = load_quantized(path)
        else:
            variant = "fp32"
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except ModelLoadError:
        raise
    except Exception as e:  # transformers raises many types (OSError, ValueError, safetensors errors...)
        raise ModelLoadError(f"{path}: cannot load model or tokenizer: {type(e).__name__}: {e}") from e
    model.eval()
    if variant == "fp32":  # dynamic-quantized modules run on CPU only
        model.to(device)
    if tokenizer.pad_token_id is None:
        # left-padded batches need a pad id; EOS is safe because padded positions are masked
        tokenizer.pad_token = tokenizer.eos_token
    max_pos = int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30)
    return LoadedModel(model, tokenizer, path, variant, max_pos)
