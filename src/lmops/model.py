"""The model: a Hugging Face Llama-style causal LM built from ``ModelConfig``, or a pretrained HF dir.

The vocabulary always comes from the token stage (``tokens/``), never from the model config, so a
model can only ever be built for the tokenizer that produced its training data. Special token ids
(BOS = EOS, PAD) are written into the HF config and lie inside the vocabulary, so ``generate`` and
serving runtimes never index past the embedding.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from lmops.config import ModelConfig

# Sizes a preset fills in when the config leaves them unset. gpt2-124m matches GPT-2 small's
# transformer body: Llama's gated MLP has three d_model x d_ff matrices, so d_ff = 2048 gives the
# same 85M non-embedding parameters as GPT-2's two 768 x 3072 ones (~110M in all with a 32k vocab,
# ~124M with GPT-2's 50,257).
PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(n_layer=2, n_head=4, n_kv_head=4, d_model=64, d_ff=192, max_seq_len=256),
    "small": dict(n_layer=6, n_head=6, n_kv_head=6, d_model=384, d_ff=1024, max_seq_len=512),
    "gpt2-124m": dict(n_layer=12, n_head=12, n_kv_head=12, d_model=768, d_ff=2048, max_seq_len=1024),
}
SIZE_FIELDS = ("n_layer", "n_head", "n_kv_head", "d_model", "d_ff", "max_seq_len")


class ModelConfigError(ValueError):
    """A model configuration that cannot be built or does not fit the tokenizer."""


@dataclass(frozen=True)
class Vocab:
    """What the model needs to know about the tokenizer (from ``TokenInfo``)."""

    size: int
    eos_id: int
    pad_id: int

    @classmethod
    def from_tokens(cls, info) -> "Vocab":  # info: lmops.data.tokens.TokenInfo
        return cls(info.vocab_size, info.eos_id, info.pad_id)


def resolve_sizes(cfg: ModelConfig) -> ModelConfig:
    """The config with every size field set: preset values fill fields left None; 'custom' needs all."""
    if cfg.preset == "custom":
        missing = [f for f in SIZE_FIELDS if getattr(cfg, f) is None and f != "n_kv_head"]
        if missing:
            raise ModelConfigError(f"model.preset=custom needs model.{', model.'.join(missing)} set")
        filled = {}
    else:
        filled = {f: v for f, v in PRESETS[cfg.preset].items() if getattr(cfg, f) is None}
    out = cfg.model_copy(update=filled)
    if out.n_kv_head is None:
        out = out.model_copy(update={"n_kv_head": out.n_head})
    if out.d_model % out.n_head:
        raise ModelConfigError(f"model.d_model ({out.d_model}) must be divisible by model.n_head ({out.n_head})")
    if out.n_head % out.n_kv_head:
        raise ModelConfigError(f"model.n_head ({out.n_head}) must be divisible by model.n_kv_head ({out.n_kv_head})")
    return out


def llama_config(cfg: ModelConfig, vocab: Vocab) -> LlamaConfig:
    """The HF config for a model built from scratch."""
    check_special_ids(vocab)
    c = resolve_sizes(cfg)
    return LlamaConfig(
        vocab_size=vocab.size,
        hidden_size=c.d_model,
        intermediate_size=c.d_ff,
        num_hidden_layers=c.n_layer,
        num_attention_heads=c.n_head,
        num_key_value_heads=c.n_kv_head,
        max_position_embeddings=c.max_seq_len,
        rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
        tie_word_embeddings=c.tie_embeddings,
        attention_dropout=c.dropout,
        bos_token_id=vocab.eos_id,  # the token stage uses EOS as the document separator and BOS
        eos_token_id=vocab.eos_id,
        pad_token_id=vocab.pad_id,
        attn_implementation="sdpa",
    )


def check_special_ids(vocab: Vocab) -> None:
    for name, tid in (("eos_id", vocab.eos_id), ("pad_id", vocab.pad_id)):
        if not 0 <= tid < vocab.size:
            raise ModelConfigError(f"tokenizer {name} {tid} lies outside the vocabulary (size {vocab.size})")


def build_model(cfg: ModelConfig, vocab: Vocab, *, block_size: int | None = None) -> PreTrainedModel:
    """A fresh Llama-style model (weights from the current torch RNG: seed before calling), or the
    pretrained directory ``cfg.pretrained`` (local or s3://) checked against the vocabulary.

    ``block_size``: the training sequence length, checked against the model's positions.
    """
    if cfg.pretrained:
        model = load_pretrained(cfg.pretrained, vocab)
    else:
        model = LlamaForCausalLM(llama_config(cfg, vocab))
    max_pos = model.config.max_position_embeddings
    if block_size is not None and block_size > max_pos:
        raise ModelConfigError(f"train.block_size {block_size} exceeds the model's {max_pos} positions (model.max_seq_len)")
    return model


def load_pretrained(uri: str, vocab: Vocab) -> PreTrainedModel:
    """Load a HF causal-LM directory to fine-tune; its vocabulary must be the token stage's."""
    from lmops import storage

    with tempfile.TemporaryDirectory(prefix="lmops-pretrained-") as tmp:
        local = storage.download_dir(uri, tmp) if storage.is_s3(uri) else Path(uri)
        if not (local / "config.json").is_file():
            raise ModelConfigError(f"model.pretrained {uri}: not a Hugging Face model directory (no config.json)")
        # weights are read into memory here, so the downloaded copy can go
        model = AutoModelForCausalLM.from_pretrained(local, attn_implementation="sdpa")
    check_vocab(model, vocab.size, where=f"model.pretrained {uri}")
    return model


def check_vocab(model: PreTrainedModel, tokens_vocab_size: int, where: str) -> None:
    """The model's embedding rows must equal the tokenizer's vocabulary: fewer would index out of
    range, more means the tokens were most likely produced by a different tokenizer."""
    model_vocab = model.get_input_embeddings().weight.shape[0]
    if model_vocab != tokens_vocab_size:
        raise ModelConfigError(
            f"{where}: vocabulary size mismatch — the model has {model_vocab} token embeddings, the tokenizer of the"
            f" token shards has {tokens_vocab_size}. Tokenize with the model's own tokenizer"
            f" (tokenize.tokenizer=<model dir>) or train a model from config."
        )


def count_params(model: torch.nn.Module, *, non_embedding: bool = False) -> int:
    """Parameters, each shared tensor once (tied embeddings count once).

    non_embedding: leave out the input token embedding (the usual 'N' of scaling-law papers); a tied
    LM head shares that tensor, so it goes too.
    """
    seen: set[int] = set()
    total = 0
    for p in model.parameters():  # parameters() already yields a tied tensor once
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    import torch.ao.nn.quantized.dynamic as nnqd

    for m in model.modules():  # dynamic int8 Linear layers hold packed weights, not parameters
        if isinstance(m, nnqd.Linear):
            total += m.in_features * m.out_features + (m.out_features if m.bias() is not None else 0)
    if non_embedding:
        emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        if emb is not None:
            total -= emb.weight.numel()
    return total


def save_model_dir(model: PreTrainedModel, out_dir: str | Path, tokenizer_dir: str | Path | None = None) -> Path:
    """A self-contained HF model directory: config.json, model.safetensors, generation_config.json and
    the tokenizer files, loadable with ``AutoModelForCausalLM`` / ``AutoTokenizer`` without lmops."""
    import shutil

    from transformers import GenerationConfig

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    c = model.config
    model.generation_config = GenerationConfig(bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id,
                                               pad_token_id=c.pad_token_id)
    model.save_pretrained(out)  # safetensors; a tied LM head is stored once
    if tokenizer_dir is not None:
        shutil.copytree(tokenizer_dir, out, dirs_exist_ok=True)
    return out
