"""A small real tokens/ directory for tests, in the layout of lmops.data.tokens.

Text: the sample corpus (.state/sample-corpus) when present, else docstrings of Python's standard
library (always there, real English + code prose). Tokenizer: a byte-level BPE trained here with
`tokenizers`. Shards and manifest are written through lmops.manifest.run_stage, exactly what readers
(open_tokens / load_split) verify. When src/lmops/data/tokenize.py lands, this can call it instead.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import warnings
from pathlib import Path

import numpy as np

from lmops.manifest import run_stage

REPO = Path(__file__).resolve().parents[1]
EOS, PAD = "<|endoftext|>", "<|pad|>"
STDLIB_MODULES = [
    "argparse", "asyncio", "collections", "contextlib", "csv", "dataclasses", "datetime", "decimal", "difflib",
    "email.message", "fractions", "functools", "gzip", "heapq", "http.client", "inspect", "ipaddress",
    "itertools", "json", "logging", "os", "pathlib", "pickle", "random", "re", "shutil", "socket", "statistics",
    "string", "subprocess", "tarfile", "textwrap", "threading", "typing", "unittest", "urllib.parse", "zipfile",
]


def corpus_texts(max_chars: int = 400_000) -> list[str]:
    sample = REPO / ".state" / "sample-corpus"
    texts: list[str] = []
    files = sorted(sample.rglob("*.jsonl")) if sample.is_dir() else []
    for path in files:  # lmops.data.sample_corpus: <kind>-NN.jsonl records with a "text" field
        share = 0  # an equal share from each file, so every kind of text is in the mix
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if share >= max_chars / len(files):
                    break
                if line.strip():
                    texts.append(json.loads(line)["text"])
                    share += len(texts[-1])
    if not texts:
        with warnings.catch_warnings():  # reading deprecated attributes (typing.io) warns
            warnings.simplefilter("ignore")
            for name in STDLIB_MODULES:
                mod = importlib.import_module(name)
                for _, obj in sorted(vars(mod).items()):
                    doc = inspect.getdoc(obj) if callable(obj) or inspect.ismodule(obj) else None
                    if doc and len(doc) > 80:
                        texts.append(doc)
    out, total = [], 0
    for t in dict.fromkeys(texts):  # dedup, keep order
        out.append(t)
        total += len(t)
        if total >= max_chars:
            break
    return out


def split_of(text: str) -> str:
    h = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) % 100
    return "val" if h < 6 else "test" if h < 12 else "train"


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=PAD)


def make_tokens_dir(out: Path, vocab_size: int = 512, max_chars: int = 400_000) -> Path:
    texts = corpus_texts(max_chars)
    hf_tok = train_tokenizer([t for t in texts if split_of(t) == "train"], vocab_size)
    eos_id, pad_id = hf_tok.convert_tokens_to_ids(EOS), hf_tok.convert_tokens_to_ids(PAD)

    def produce(tmp: Path) -> dict:
        hf_tok.save_pretrained(tmp / "tokenizer")
        ids: dict[str, list[int]] = {"train": [], "val": [], "test": []}
        docs = {s: 0 for s in ids}
        for text in texts:
            split = split_of(text)
            ids[split].extend(hf_tok.encode(text, add_special_tokens=False) + [eos_id])
            docs[split] += 1
        for split, seq in ids.items():
            np.asarray(seq, dtype="<u2").tofile(tmp / f"{split}.bin")
        return {"counts": {"vocab_size": len(hf_tok), "dtype": "uint16", "eos_id": eos_id, "pad_id": pad_id,
                           "tokens": {s: len(v) for s, v in ids.items()}, "documents": docs}}

    run_stage("tokenize", out, code="tests.tiny_tokens", config={"vocab_size": vocab_size}, inputs={},
              produce=produce, log=lambda s: None)
    return out
