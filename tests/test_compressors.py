"""lmops.evaluate.compressors: gzip -9 / xz -9e bits per byte on a split's own bytes, the line a model must beat."""

from __future__ import annotations

import gzip
import lzma
import os

import pytest
from transformers import AutoTokenizer

from lmops.evaluate import compressors
from lmops.evaluate.token_bytes import ids_to_bytes, token_byte_strings
from lmops.data.tokens import load_split, open_tokens


def test_bits_per_byte_tracks_how_compressible_the_data_is():
    repetitive = compressors.bits_per_byte(b"the same line\n" * 2000)
    noise = compressors.bits_per_byte(os.urandom(20000))
    assert set(repetitive) == {"gzip_9_bits_per_byte", "xz_9e_bits_per_byte"}
    assert repetitive["gzip_9_bits_per_byte"] < 0.1 and repetitive["xz_9e_bits_per_byte"] < 0.1
    assert noise["gzip_9_bits_per_byte"] > 7.9 and noise["xz_9e_bits_per_byte"] > 7.9  # random bytes: no gain
    assert compressors.bits_per_byte(b"") == {}


def test_a_split_decodes_to_its_exact_bytes(tiny_tokens):
    info = open_tokens(tiny_tokens, splits=("test",))
    ids = load_split(info, "test")
    strings = token_byte_strings(info.tokenizer_dir)
    hf_tok = AutoTokenizer.from_pretrained(info.tokenizer_dir)
    # the same text the tokenizer decodes (documents joined without their EOS, which spells no bytes)
    assert ids_to_bytes(ids[:2000], strings) == hf_tok.decode(ids[:2000].tolist(), skip_special_tokens=True).encode()
    text = "naïve café: 漢字 and 🙂\n"
    assert ids_to_bytes(hf_tok.encode(text, add_special_tokens=False), strings) == text.encode()
    figures = compressors.split_bits_per_byte(tiny_tokens, "test")
    data = ids_to_bytes(ids, strings)
    assert figures["gzip_9_bits_per_byte"] == pytest.approx(8 * len(gzip.compress(data, 9)) / len(data), rel=1e-3)
    # English prose: xz beats gzip, and both are far from 8 bits and far from free
    assert 1.5 < figures["xz_9e_bits_per_byte"] < figures["gzip_9_bits_per_byte"] < 5
    assert lzma.decompress(compressors.COMPRESSORS["xz_9e"](data)) == data
