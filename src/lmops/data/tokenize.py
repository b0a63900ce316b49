"""Stage 2, ``tokenize``: dataset/ -> tokens/ (tokenizer/ + one packed .bin per split).

The tokenizer is trained on the train split only (val/test stay unseen), or loaded from an existing
directory, local or s3://. Every split is then encoded in batches — the Rust encoder parallelises
within a batch, and a couple of batches are encoded ahead on worker threads — and each batch is
appended to ``<split>.bin`` as packed bytes, so only a few batches of ids are ever held at once.
The layout is the contract in ``lmops.data.tokens``. ``engine: ray`` (lmops.data.ray_tokenize) encodes
on Ray Data workers instead and writes the same bytes; the tokenizer is trained on the same bounded
sample (``train_sample_mb``) either way.
"""

from __future__ import annotations

import struct
import sys
import tempfile
import time
from collections import deque
from contextlib import ExitStack
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any


from lmops import storage
from lmops.config import TokenizeConfig
from lmops.data import dataset as dataset_mod
from lmops.data import engine, progress, ray_tokenize, tokens
from lmops.data import tokenizer as tokenizer_mod
from lmops.data.dataset import iter_texts, open_dataset, split_shards
from lmops.data.progress import phase_line
from lmops.data.tokenizer import (
    TokenizerError, batched, load_existing, packing_encoder, save_trained, train_bpe, training_sample,
)
from lmops.data.tokens import STRUCT_ITEM, pack_ids
from lmops.manifest import (
    Manifest,
    ManifestError,
    StageResult,
    code_digest,
    content_digest,
    file_table,
    read_manifest,
    run_stage,
)

STAGE = "tokenize"
TOKENIZER_DIR = "tokenizer"
ALWAYS_SPLITS = ("train", "val", "test")
UINT16_MAX_VOCAB = 65535  # the contract in lmops.data.tokens: uint16 when vocab_size <= 65535
# Batches encoded ahead of the one being packed. On 2 cores with one to spare, 2 beat 0 and 1; on a
# saturated machine every depth measured alike (the overlap needs an idle core to pay).
ENCODE_IN_FLIGHT = 2

__all__ = ["tokenize_dataset", "encode_split", "encode_splits", "splits_of", "token_dtype", "key_config", "TokenizerError"]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def token_dtype(vocab_size: int) -> str:
    """Little-endian dtype name for packed ids: the smallest that holds every id."""
    return "uint16" if vocab_size <= UINT16_MAX_VOCAB else "uint32"


def tokenize_dataset(
    cfg: TokenizeConfig,
    dataset_dir: str | Path,
    out_dir: str | Path,
    *,
    cache_dir: str | Path | None = None,
    log: Callable[[str], None] = _stderr,
    shards_uri: str | None = None,
) -> StageResult:
    """Tokenize a build-stage output directory into ``out_dir`` (skipped when cached).

    ``shards_uri``: engine ray only: an s3:// copy of ``dataset_dir`` that the Ray workers read instead of the
    local files (a RayJob's worker pods do not share the driver's disk)."""
    dataset_dir = Path(dataset_dir)
    # The key needs only the dataset's manifest; the shards are verified in produce(), when read.
    dataset = read_manifest(dataset_dir, stage="build")
    inputs: dict[str, dict[str, Any]] = {"dataset": {"digest": dataset.digest, "path": str(dataset_dir)}}
    with tempfile.TemporaryDirectory(prefix="lmops-tokenizer-") as tmp:
        source: Path | None = None
        if cfg.tokenizer:
            source = storage.download_dir(cfg.tokenizer, Path(tmp) / "src")
            # content, not path: a tokenizer copied elsewhere gives the same key
            inputs["tokenizer"] = {"digest": content_digest(file_table(source)), "path": cfg.tokenizer}

        def produce(out: Path) -> dict[str, Any]:
            return _produce(cfg, dataset_dir, source, out, log, shards_uri)

        return run_stage(STAGE, out_dir, code=_code(), config=key_config(cfg), inputs=inputs,
                         produce=produce, cache_dir=cache_dir, log=log)


def key_config(cfg: TokenizeConfig) -> dict[str, Any]:
    """The config section as it enters the cache key and the manifest.

    Left out: ``tokenizer`` (a path; its content digest is an input instead), ``batch_size``, ``engine`` and
    ``ray`` (they change speed, never the output bytes).
    """
    return cfg.model_dump(mode="json", exclude={"tokenizer", "batch_size", "engine", "ray"})


def _code() -> str:
    return code_digest(__file__, tokenizer_mod.__file__, dataset_mod.__file__, tokens.__file__, ray_tokenize.__file__,
                       progress.__file__)


def _produce(cfg: TokenizeConfig, dataset_dir: Path, source: Path | None, out: Path,
             log: Callable[[str], None], shards_uri: str | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    dataset = open_dataset(dataset_dir)  # sha256 of every shard: a corrupted one fails here, named
    tok_dir = out / TOKENIZER_DIR
    if source is None:
        log(f"[{STAGE}] training byte-level BPE (vocab {cfg.vocab_size}) on {dataset_dir} train split"
            + (f" (its first {cfg.train_sample_mb:g} MB)" if cfg.train_sample_mb else ""))
        texts = training_sample(iter_texts(dataset_dir, "train", dataset), cfg.train_sample_mb)
        save_trained(train_bpe(batched(texts, cfg.batch_size), cfg), cfg, tok_dir)
    else:
        log(f"[{STAGE}] loading tokenizer {cfg.tokenizer}")
        load_existing(source, cfg, tok_dir)
    tokenizer_seconds = time.perf_counter() - started
    log(f"[{STAGE}] {engine.resolve(cfg.engine)}: tokenizer {tokenizer_seconds:.1f}s"
        f" ({'trained' if source is None else 'loaded'}, vocab {cfg.vocab_size})")

    encoder = packing_encoder(tok_dir)
    vocab = encoder.get_vocab(with_added_tokens=True)
    vocab_size = max(vocab.values()) + 1  # ids may have gaps in loaded tokenizers; the table needs max+1
    eos_id, pad_id = vocab[cfg.eos_token], vocab[cfg.pad_token]
    dtype = token_dtype(vocab_size)

    tokens: dict[str, int] = {}
    documents: dict[str, int] = {}
    encode_started = time.perf_counter()
    splits = splits_of(dataset)
    if engine.resolve(cfg.engine) == "ray":
        encoded = ray_tokenize.encode_splits(tok_dir, dataset_dir, dataset, splits, out, dtype, eos_id, cfg, log,
                                             shards_uri)
    else:
        parts = [(iter_texts(dataset_dir, split, dataset), out / f"{split}.bin") for split in splits]
        encoded = encode_splits(encoder, parts, dtype, eos_id, cfg.batch_size)
    encode_seconds = time.perf_counter() - encode_started
    for split, (n_docs, n_tokens) in zip(splits, encoded):
        documents[split], tokens[split] = n_docs, n_tokens
        log(f"[{STAGE}] {split}: {documents[split]} documents, {tokens[split]} tokens")
    if engine.resolve(cfg.engine) == "local":  # the ray engine logs its own line, with its blocks
        shard_bytes = sum(dataset.files[name]["bytes"] for split in splits for name in split_shards(dataset, split))
        phase_line(log, STAGE, "local", "encode", sum(documents.values()), shard_bytes, encode_seconds,
                   f"{sum(tokens.values())} tokens")
    if documents["train"] == 0:
        raise ManifestError(f"{dataset_dir}: the train split has no documents — nothing to train on")

    total = sum(tokens.values())
    return {
        "counts": {
            "vocab_size": vocab_size, "dtype": dtype, "eos_id": eos_id, "pad_id": pad_id,
            "tokens": tokens, "documents": documents,
            "tokenizer": "trained" if source is None else "loaded",
        },
        "metrics": {
            "seconds": round(time.perf_counter() - started, 3),
            "tokenizer_seconds": round(tokenizer_seconds, 3),
            "encode_seconds": round(encode_seconds, 3),
            "phase_seconds": {"tokenizer": round(tokenizer_seconds, 3), "encode": round(encode_seconds, 3)},
            "tokens_per_s": round(total / encode_seconds, 1) if encode_seconds > 0 else None,
            "batch_size": cfg.batch_size,
            "engine": engine.resolve(cfg.engine),
        },
    }


def splits_of(dataset: Manifest) -> list[str]:
    """train/val/test always (an empty split gives an empty file); calibration when the dataset has it."""
    present = dataset.counts.get("splits", {})
    return [*ALWAYS_SPLITS, *(["calibration"] if "calibration" in present else [])]


def encode_split(encoder, texts: Iterable[str], path: Path, dtype: str, eos_id: int,
                 batch_size: int, *, in_flight: int = ENCODE_IN_FLIGHT) -> tuple[int, int]:
    """Encode texts batch by batch into ``path``: each document's ids then EOS. Returns (documents, tokens)."""
    return encode_splits(encoder, [(texts, path)], dtype, eos_id, batch_size, in_flight=in_flight)[0]


def encode_splits(encoder, parts: list[tuple[Iterable[str], Path]], dtype: str, eos_id: int,
                  batch_size: int, *, in_flight: int = ENCODE_IN_FLIGHT) -> list[tuple[int, int]]:
    """Encode each (texts, path) part into its file as ``encode_split`` does; (documents, tokens) per part.

    ``encode_batch_fast`` gives the same ids as ``encode_batch`` without computing character offsets,
    which packing never needs (tests check the bytes are equal). Up to ``in_flight`` batches are
    encoded on worker threads while this thread reads the next texts and packs and writes finished
    batches, so at most ``in_flight + 1`` batches are held at once; each file is written in batch
    order. One pipeline runs through all parts: a small split (val, test) is then encoded beside its
    neighbours' batches instead of alone on a drained pipeline.
    """
    item = STRUCT_ITEM[dtype]
    counts = [[0, 0] for _ in parts]
    with ExitStack() as stack:
        files = [stack.enter_context(open(path, "wb")) for _, path in parts]  # an empty part: an empty file
        tagged = ((i, batch) for i, (texts, _) in enumerate(parts) for batch in batched(texts, batch_size))
        for i, encodings in _encoded(encoder, tagged, in_flight):
            packed = pack_ids(encodings, eos_id, item)
            files[i].write(packed)
            counts[i][0] += len(encodings)
            counts[i][1] += len(packed) // struct.calcsize(item)
    return [(docs, toks) for docs, toks in counts]


def _encoded(encoder, batches: Iterable[tuple[int, list[str]]], in_flight: int) -> Iterator[tuple[int, list]]:
    """(tag, encodings) for each (tag, texts) batch, in order, with up to ``in_flight`` encoded ahead.

    The Rust encoder releases the GIL, so the Python work around it (JSON parsing of the next texts,
    packing ids) overlaps the encoding instead of leaving the encoder's threads idle between batches;
    two batches in flight also keep them busy through the tail of one batch, when few documents are
    left to share out.
    """
    encode = getattr(encoder, "encode_batch_fast", encoder.encode_batch)
    pending: deque[tuple[int, Future]] = deque()
    pool = ThreadPoolExecutor(max(1, in_flight), thread_name_prefix="lmops-encode")
    try:
        for tag, batch in batches:
            pending.append((tag, pool.submit(encode, batch, add_special_tokens=False)))
            if len(pending) > in_flight:
                tag, done = pending.popleft()
                yield tag, done.result()
        while pending:
            tag, done = pending.popleft()
            yield tag, done.result()
    finally:
        # on an error (or an abandoned generator) nothing queued is started; running batches finish
        pool.shutdown(wait=True, cancel_futures=True)
