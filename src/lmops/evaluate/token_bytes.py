"""Bytes of text per token id — the denominator of bits per byte — as one vocabulary-sized table.

A byte-level BPE (what the tokenize stage trains; GPT-2's too) spells every vocabulary entry with one
printable stand-in character per raw byte (GPT-2's ``bytes_to_unicode``). Mapping the stand-ins back
gives the token's exact bytes, also for a token that holds only part of a multi-byte UTF-8 character:
decoding such a token on its own yields U+FFFD (3 bytes), whatever the true count is.

Special tokens (EOS, pad) stand for no text: 0 bytes. A non-special added token is matched as plain
text, so its bytes are its content's UTF-8. Any other tokenizer (SentencePiece-style, WordPiece) has no
exact per-token byte spelling: ``token_byte_lengths`` returns None and callers leave bits per byte out.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from lmops.data.tokenizer import TOKENIZER_JSON, open_encoder


@lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """Stand-in character -> raw byte: the inverse of GPT-2's ``bytes_to_unicode``.

    Printable Latin-1 bytes stand for themselves; the other 68 (controls, space, 0x7F-0xA0, 0xAD) are
    shifted to U+0100 onwards in byte order, so every byte has a visible, non-whitespace character.
    """
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in kept]
    mapping = {chr(b): b for b in kept}
    mapping.update({chr(256 + i): b for i, b in enumerate(shifted)})
    return mapping


def token_byte_lengths(tokenizer_dir: str | Path) -> np.ndarray | None:
    """``lengths[id]`` = UTF-8 bytes of text token ``id`` stands for; None for a tokenizer that is not
    byte-level. Ids the vocabulary skips are 0."""
    spelled = token_byte_strings(tokenizer_dir)
    if spelled is None:
        return None
    return np.array([len(b) for b in spelled], dtype=np.int64)


def token_byte_strings(tokenizer_dir: str | Path) -> list[bytes] | None:
    """``strings[id]`` = the raw bytes token ``id`` stands for (b"" for special tokens and skipped ids);
    None for a tokenizer that is not byte-level."""
    tokenizer_dir = Path(tokenizer_dir)
    if not _is_byte_level(json.loads((tokenizer_dir / TOKENIZER_JSON).read_text(encoding="utf-8"))):
        return None
    tok = open_encoder(tokenizer_dir)
    added = tok.get_added_tokens_decoder()
    vocab = tok.get_vocab(with_added_tokens=True)
    table = [b""] * (max(vocab.values()) + 1)
    decode = byte_decoder()
    for piece, i in vocab.items():
        if i in added:
            table[i] = b"" if added[i].special else added[i].content.encode("utf-8")
        elif all(ch in decode for ch in piece):
            table[i] = bytes(decode[ch] for ch in piece)  # one stand-in character per byte
        else:
            table[i] = piece.encode("utf-8")  # not byte-level spelled (cannot happen in a byte-level vocab)
    return table


def ids_to_bytes(ids: np.ndarray | list[int], strings: list[bytes]) -> bytes:
    """The raw text bytes a sequence of token ids spells (special tokens spell nothing)."""
    return b"".join(strings[i] for i in np.asarray(ids).tolist())


def _is_byte_level(spec: dict) -> bool:
    """Whether tokenizer.json decodes with ByteLevel (alone or inside a Sequence)."""
    decoder = spec.get("decoder") or {}
    parts = decoder.get("decoders", []) if decoder.get("type") == "Sequence" else [decoder]
    return any(p.get("type") == "ByteLevel" for p in parts)
