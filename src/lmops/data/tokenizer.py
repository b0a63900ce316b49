"""The tokenizer directory: train a byte-level BPE, or load an existing one; save what AutoTokenizer loads.

Byte-level BPE with no prefix space and no normalizer is lossless: ``decode(encode(doc)) == doc`` for
any Unicode text, which the tokenize stage relies on (documents are packed back to back, split by EOS).
Special tokens come first in a trained vocabulary (EOS = 0, pad = 1, extras after), so they are always
inside the embedding table. EOS doubles as BOS and UNK, as in GPT-2.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from lmops.config import TokenizeConfig

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
# Saved with every tokenizer so `apply_chat_template` works on the model directory (lmops serve's chat
# route, vLLM, KServe's HF runtime): each turn is its role, a newline, its text and EOS, so a model
# that ends its turn with EOS stops where a document would.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] + '\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'assistant\\n' }}{% endif %}"
)
# Loaders that find no sensible maximum report ~1e30; anything this large means "unknown".
UNKNOWN_MAX_LENGTH = 10**12


class TokenizerError(ValueError):
    """A tokenizer that cannot be loaded or lacks a token the pipeline needs; the message names it."""


def special_tokens(cfg: TokenizeConfig) -> list[str]:
    """EOS, pad, then the extras — each once, in this order (it fixes their ids in a trained vocab)."""
    return list(dict.fromkeys([cfg.eos_token, cfg.pad_token, *cfg.extra_special_tokens]))


def train_bpe(batches: Iterable[list[str]], cfg: TokenizeConfig, length: int | None = None) -> Tokenizer:
    """Train a byte-level BPE on batches of texts (the train split only, in dataset order).

    The merges depend only on the texts and their order, so the same dataset gives the same
    tokenizer.json byte for byte (tests/data/test_tokenize.py checks this across processes).
    """
    tok = Tokenizer(models.BPE())
    _make_byte_level(tok)
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=special_tokens(cfg),
        # every byte is in the alphabet, even ones the corpus lacks: no input can be unencodable
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(batches, trainer=trainer, length=length)
    return tok


def _make_byte_level(tok: Tokenizer) -> None:
    # add_prefix_space=False: a leading space would be invented on encode and kept on decode.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()


def save_trained(tok: Tokenizer, cfg: TokenizeConfig, out_dir: Path) -> None:
    """Write tokenizer.json + tokenizer_config.json in the layout AutoTokenizer.from_pretrained loads.

    Written by hand rather than through transformers' save_pretrained so the class name is
    ``PreTrainedTokenizerFast``, which transformers 4.x (vLLM, older KServe runtimes) and 5.x both load.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / TOKENIZER_JSON))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": cfg.eos_token,
        "eos_token": cfg.eos_token,
        "unk_token": cfg.eos_token,
        "pad_token": cfg.pad_token,
        "additional_special_tokens": [t for t in special_tokens(cfg) if t not in (cfg.eos_token, cfg.pad_token)],
        "model_max_length": cfg.model_max_length,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (out_dir / TOKENIZER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def load_existing(src: Path, cfg: TokenizeConfig, out_dir: Path) -> None:
    """Check that ``src`` loads with AutoTokenizer and holds EOS and pad; save it into ``out_dir``.

    The loaded tokenizer keeps its own BOS/UNK when it has them; EOS and pad are set to the
    configured tokens (which must already be in its vocabulary: adding them would grow the
    vocabulary past a pretrained model's embedding table).
    """
    from transformers import AutoTokenizer  # slow import: only on this path

    try:
        hf = AutoTokenizer.from_pretrained(str(src))
    except Exception as e:  # transformers raises many types (OSError, ValueError, JSON errors...)
        raise TokenizerError(f"{src}: not a loadable tokenizer directory: {type(e).__name__}: {e}") from None
    backend = getattr(hf, "backend_tokenizer", None)
    if not isinstance(backend, Tokenizer):
        raise TokenizerError(f"{src}: {type(hf).__name__} has no Hugging Face `tokenizers` backend (need a fast tokenizer)")
    vocab = backend.get_vocab(with_added_tokens=True)
    for role, token in (("eos_token", cfg.eos_token), ("pad_token", cfg.pad_token)):
        if token not in vocab:
            raise TokenizerError(
                f"{src}: tokenize.{role} {token!r} is not in this tokenizer's vocabulary"
                f" (its special tokens: {sorted(hf.all_special_tokens)}); set tokenize.{role} to one of them"
            )
    hf.eos_token = cfg.eos_token
    hf.pad_token = cfg.pad_token
    if hf.bos_token is None:
        hf.bos_token = cfg.eos_token
    if not getattr(hf, "chat_template", None):
        hf.chat_template = CHAT_TEMPLATE
    if not hf.model_max_length or hf.model_max_length >= UNKNOWN_MAX_LENGTH:
        hf.model_max_length = cfg.model_max_length
    if out_dir.exists():
        shutil.rmtree(out_dir)
    hf.save_pretrained(str(out_dir))


def open_encoder(tokenizer_dir: Path) -> Tokenizer:
    """The Rust tokenizer saved in a tokenizer directory, set up for encoding corpus text.

    ``encode_special_tokens``: a document that happens to contain the literal text of a special
    token (``<|endoftext|>`` in a code comment) is encoded as ordinary text, never as EOS; otherwise
    the packed shards would show a document boundary that is not there.
    """
    path = tokenizer_dir / TOKENIZER_JSON
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception for malformed files
        raise TokenizerError(f"{path}: cannot load: {e}") from None
    tok.encode_special_tokens = True
    return tok


def packing_encoder(tokenizer_dir: Path) -> Tokenizer:
    """``open_encoder`` without the post-processor, for packing corpus text into token shards.

    Packing encodes with ``add_special_tokens=False``, where a post-processor adds no token and
    changes no id (it only sets offsets and type ids), yet still runs on every document: the
    TemplateProcessing that transformers' save_pretrained writes into each tokenizer it saves cost
    5-10% of encoding time here. tests/data/test_tokenize.py checks the packed bytes equal the
    full tokenizer's ``encode_batch`` ids, with a post-processor that would add tokens.
    """
    return _for_packing(open_encoder(tokenizer_dir))


def packing_encoder_from_json(tokenizer_json: str) -> Tokenizer:
    """``packing_encoder`` from the text of a tokenizer.json (what engine: ray sends its workers)."""
    tok = Tokenizer.from_str(tokenizer_json)
    tok.encode_special_tokens = True
    return _for_packing(tok)


def _for_packing(tok: Tokenizer) -> Tokenizer:
    tok.post_processor = None
    return tok


def training_sample(texts: Iterable[str], limit_mb: float | None) -> Iterator[str]:
    """The first texts up to ``limit_mb`` MB of UTF-8 (the text that crosses the limit included): a bounded,
    deterministic sample of a split read in dataset order. None: every text."""
    if limit_mb is None:
        yield from texts
        return
    limit, seen = limit_mb * 1e6, 0
    for text in texts:
        yield text
        seen += len(text.encode("utf-8"))
        if seen >= limit:
            return


def batched(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    """Lists of up to ``size`` texts, in order."""
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
