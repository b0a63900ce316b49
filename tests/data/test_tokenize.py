"""Stage 2, tokenize: real BPE training, real files, real AutoTokenizer, real S3 (moto_server)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from dataset_fixture import HARD_DOCS, TEST_BUILD, WORDS, make_dataset, split_texts, synthetic_docs

from lmops.config import SplitConfig, TokenizeConfig
from lmops.data.dataset import iter_texts, open_dataset, split_shards
from lmops.data.tokenize import encode_split, encode_splits, token_dtype, tokenize_dataset
from lmops.data.tokenizer import TokenizerError, batched, open_encoder, packing_encoder, save_trained, train_bpe
from lmops.data.tokens import load_split, open_tokens
from lmops.manifest import ManifestError, file_table, read_manifest
from lmops.storage import StorageError, upload_dir

CFG = TokenizeConfig(vocab_size=400, min_frequency=2, batch_size=16)
QUIET = {"log": lambda s: None}
CORPUS = synthetic_docs(160, seed=1) + HARD_DOCS


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One build + tokenize run shared by the read-only tests: (dataset dir, tokens dir, docs per split)."""
    root = tmp_path_factory.mktemp("trained")
    make_dataset(root / "dataset", CORPUS)
    tokenize_dataset(CFG, root / "dataset", root / "tokens", **QUIET)
    return root / "dataset", root / "tokens", split_texts(root / "dataset")


def documents_of(ids: np.ndarray, eos_id: int, decode) -> list[str]:
    """Split packed ids at EOS and decode each document."""
    ends = np.flatnonzero(ids == eos_id)
    assert len(ids) == 0 or ends[-1] == len(ids) - 1, "every document, the last included, ends with EOS"
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [decode(ids[s:e].tolist()) for s, e in zip(starts, ends)]


def test_byte_level_bpe_round_trips_raw_text_exactly(tmp_path):
    """Text the build stage would normalize (tabs, space runs, lone newlines) still round-trips."""
    from transformers import AutoTokenizer

    docs = synthetic_docs(60, seed=5) + HARD_DOCS + ["", "\r\n\x0b\u2028 \u00a0 \ufeffzero\u200bwidth"]
    save_trained(train_bpe(batched(docs, 16), CFG), CFG, tmp_path / "tokenizer")
    n_docs, n_tokens = encode_split(open_encoder(tmp_path / "tokenizer"), docs, tmp_path / "x.bin", "uint16", 0, 7)
    ids = np.fromfile(tmp_path / "x.bin", dtype="<u2")
    assert (n_docs, n_tokens) == (len(docs), len(ids))
    hf = AutoTokenizer.from_pretrained(str(tmp_path / "tokenizer"))
    assert documents_of(ids, hf.eos_token_id, lambda i: hf.decode(i, skip_special_tokens=False)) == docs


def test_trained_tokenizer_loads_with_autotokenizer(trained):
    from transformers import AutoTokenizer

    _, tokens, _ = trained
    hf = AutoTokenizer.from_pretrained(str(tokens / "tokenizer"))
    info = open_tokens(tokens)
    assert hf.eos_token == CFG.eos_token and hf.pad_token == CFG.pad_token
    assert hf.eos_token_id == info.eos_id and hf.bos_token_id == info.eos_id and hf.unk_token_id == info.eos_id
    assert hf.pad_token_id == info.pad_id and info.pad_id < info.vocab_size
    assert hf.model_max_length == CFG.model_max_length
    assert len(hf) == info.vocab_size <= CFG.vocab_size
    doc = HARD_DOCS[1]
    assert hf.decode(hf(doc)["input_ids"]) == doc


def test_each_split_decodes_back_to_its_documents(trained):
    from transformers import AutoTokenizer

    _, tokens, docs = trained
    assert set(docs) == {"train", "val", "test", "calibration"}, "the test build config gives every split documents"
    joined = "".join(d for split in docs.values() for d in split)
    assert "👩‍👩‍👧" in joined and "<|endoftext|>" in joined and "日本語" in joined, "hard text survived the build"
    info = open_tokens(tokens, splits=("train", "val", "test", "calibration"))
    hf = AutoTokenizer.from_pretrained(str(info.tokenizer_dir))
    decode = lambda ids: hf.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)  # noqa: E731
    for split, expected in docs.items():
        ids = load_split(info, split)
        assert ids.dtype == np.dtype("<u2")
        assert documents_of(np.asarray(ids), info.eos_id, decode) == expected, split
        assert info.manifest.counts["documents"][split] == len(expected)
        assert info.tokens[split] == len(ids)


def test_manifest_counts_and_metrics(trained):
    dataset, tokens, docs = trained
    m = read_manifest(tokens, stage="tokenize")
    assert m.inputs["dataset"]["digest"] == read_manifest(dataset).digest
    assert m.counts["dtype"] == "uint16" and m.counts["tokenizer"] == "trained"
    assert set(m.files) >= {"train.bin", "val.bin", "test.bin", "calibration.bin", "tokenizer/tokenizer.json"}
    assert m.metrics["tokens_per_s"] > 0 and m.metrics["encode_seconds"] >= 0
    assert m.metrics["phase_seconds"] == {"tokenizer": m.metrics["tokenizer_seconds"],
                                          "encode": m.metrics["encode_seconds"]}


def test_no_calibration_file_without_a_calibration_split(tmp_path):
    make_dataset(tmp_path / "ds", CORPUS, TEST_BUILD.model_copy(update={"split": SplitConfig(val=0.2, test=0.2)}))
    res = tokenize_dataset(CFG, tmp_path / "ds", tmp_path / "tok", **QUIET)
    assert {f for f in res.manifest.files if f.endswith(".bin")} == {"train.bin", "val.bin", "test.bin"}


def test_an_empty_split_gives_an_empty_shard(tmp_path):
    make_dataset(tmp_path / "ds", CORPUS[:40], TEST_BUILD.model_copy(update={"split": SplitConfig(val=0.1, test=0.001)}))
    assert split_texts(tmp_path / "ds")["test"] == [], "precondition: no document hashes into a 0.1% test split"
    info = open_tokens(tokenize_dataset(CFG, tmp_path / "ds", tmp_path / "tok", **QUIET).path)
    assert info.tokens["test"] == 0 and len(load_split(info, "test")) == 0
    assert info.manifest.counts["documents"]["test"] == 0


def test_dtype_is_uint16_up_to_65535_then_uint32():
    assert token_dtype(300) == token_dtype(65535) == "uint16"
    assert token_dtype(65536) == token_dtype(200_000) == "uint32"


def test_fast_batch_encoding_gives_the_same_ids_as_encode_batch(trained):
    _, tokens, docs = trained
    enc = open_encoder(tokens / "tokenizer")
    texts = docs["train"]
    assert [e.ids for e in enc.encode_batch_fast(texts, add_special_tokens=False)] == \
           [e.ids for e in enc.encode_batch(texts, add_special_tokens=False)]


def encode_batch_shard(tokenizer_dir, texts: list[str], eos_id: int, dtype: str) -> bytes:
    """What the stage wrote before it pipelined and dropped the post-processor: the full tokenizer's
    ``encode_batch`` ids (offsets and post-processor included), each document then EOS, little-endian."""
    enc = open_encoder(tokenizer_dir)
    ids = [i for e in enc.encode_batch(texts, add_special_tokens=False) for i in (*e.ids, eos_id)]
    return np.array(ids, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()


def test_shards_are_encode_batch_ids_byte_for_byte(trained, tmp_path):
    """Trained, and loaded with a post-processor that adds tokens when asked: the shards are the
    ``encode_batch`` ids packed, so the cache and other engines see the same bytes as before."""
    from tokenizers import processors

    dataset, tokens, docs = trained
    tok = open_encoder(tokens / "tokenizer")
    eos = CFG.eos_token
    tok.post_processor = processors.TemplateProcessing(single=f"{eos} $A {eos}", special_tokens=[(eos, 0)])
    src = shutil.copytree(tokens / "tokenizer", tmp_path / "with-template")
    tok.save(str(src / "tokenizer.json"))
    loaded = tokenize_dataset(CFG.model_copy(update={"tokenizer": str(src)}), dataset, tmp_path / "tok", **QUIET)
    for out in (tokens, loaded.path):
        info = open_tokens(out, splits=tuple(docs))
        for split, texts in docs.items():
            expected = encode_batch_shard(info.tokenizer_dir, texts, info.eos_id, info.dtype)
            assert (out / f"{split}.bin").read_bytes() == expected, (out.name, split)
    saved = open_encoder(loaded.path / "tokenizer")
    assert saved.encode("x", add_special_tokens=True).ids != saved.encode("x", add_special_tokens=False).ids, \
        "precondition: the loaded tokenizer keeps a post-processor that adds tokens"


@pytest.mark.parametrize("in_flight", [0, 1, 3])
def test_batches_in_flight_across_splits_change_no_byte(trained, tmp_path, in_flight):
    """Parts share one pipeline (an empty one between): each file still gets exactly its own batches."""
    _, tokens, docs = trained
    parts = {"a": docs["train"], "empty": [], "b": docs["val"], "c": docs["test"][:3]}
    counts = encode_splits(packing_encoder(tokens / "tokenizer"), [(t, tmp_path / f"{n}.bin") for n, t in parts.items()],
                           "uint16", 0, 5, in_flight=in_flight)
    for (name, texts), (n_docs, n_tokens) in zip(parts.items(), counts):
        expected = encode_batch_shard(tokens / "tokenizer", texts, 0, "uint16")
        assert (tmp_path / f"{name}.bin").read_bytes() == expected, name
        assert (n_docs, 2 * n_tokens) == (len(texts), len(expected)), name


def test_an_id_too_large_for_the_dtype_raises_never_wraps(trained, tmp_path):
    import struct

    _, tokens, docs = trained
    with pytest.raises(struct.error):
        encode_split(packing_encoder(tokens / "tokenizer"), docs["val"], tmp_path / "x.bin", "uint16", 65_536, 8)


def test_an_encoding_error_in_a_worker_reaches_the_caller(trained, tmp_path):
    _, tokens, docs = trained
    texts = [*docs["train"][:20], None, *docs["train"][20:]]  # the third batch of 8 cannot be encoded
    with pytest.raises(TypeError):
        encode_split(packing_encoder(tokens / "tokenizer"), texts, tmp_path / "x.bin", "uint16", 0, 8)


def json_texts(dataset, m, split: str) -> list[str]:
    """The reference: stdlib json on each line of each shard."""
    lines = [line for shard in split_shards(m, split) for line in (dataset / shard).read_bytes().split(b"\n")[:-1]]
    return [json.loads(line)["text"] for line in lines]


def test_iter_texts_are_the_json_texts_of_every_line(trained):
    dataset, _, docs = trained
    m = open_dataset(dataset)
    for split in docs:
        assert list(iter_texts(dataset, split, m)) == json_texts(dataset, m, split), split


def test_a_document_longer_than_the_json_block_goes_to_the_line_reader(tmp_path):
    """pyarrow refuses a line spanning several blocks: from that record on the line reader takes over."""
    long_doc = " ".join(WORDS) * 40
    make_dataset(tmp_path / "ds", [*synthetic_docs(40, seed=3), long_doc, *synthetic_docs(40, seed=4)])
    m = open_dataset(tmp_path / "ds")
    split = next(s for s, texts in split_texts(tmp_path / "ds").items() if long_doc in texts)
    expected = json_texts(tmp_path / "ds", m, split)
    assert 0 < expected.index(long_doc) < len(expected) - 1, "precondition: the fallback starts mid-shard"
    assert list(iter_texts(tmp_path / "ds", split, m, block_bytes=1024)) == expected


def test_open_tokens_detects_a_corrupted_token_shard(trained, tmp_path):
    import shutil

    _, tokens, _ = trained
    copy = shutil.copytree(tokens, tmp_path / "tokens")
    raw = bytearray((copy / "val.bin").read_bytes())
    raw[3] ^= 0xFF
    (copy / "val.bin").write_bytes(bytes(raw))
    with pytest.raises(ManifestError, match="val.bin"):
        open_tokens(copy)


# ---------------------------------------------------------------- caching and reproducibility
def test_second_run_cached_and_changed_dataset_reruns(tmp_path):
    make_dataset(tmp_path / "ds", CORPUS)
    first = tokenize_dataset(CFG, tmp_path / "ds", tmp_path / "tok", **QUIET)
    assert not first.cached
    assert tokenize_dataset(CFG, tmp_path / "ds", tmp_path / "tok", **QUIET).cached
    # batch size changes speed, not bytes: still cached; a renamed dataset with the same content too
    (tmp_path / "ds").rename(tmp_path / "ds2")
    assert tokenize_dataset(CFG.model_copy(update={"batch_size": 7}), tmp_path / "ds2", tmp_path / "tok", **QUIET).cached
    make_dataset(tmp_path / "ds2", CORPUS + ["one more document, new to the dataset"])
    again = tokenize_dataset(CFG, tmp_path / "ds2", tmp_path / "tok", **QUIET)
    assert not again.cached
    assert sum(again.manifest.counts["documents"].values()) == sum(first.manifest.counts["documents"].values()) + 1
    assert not tokenize_dataset(CFG.model_copy(update={"vocab_size": 350}), tmp_path / "ds2", tmp_path / "tok",
                                **QUIET).cached


def test_outputs_are_byte_identical_across_processes(trained, tmp_path):
    """BPE training and encoding are deterministic: a fresh process (new hash seeds) writes the same bytes."""
    dataset, tokens, _ = trained
    script = (
        "import sys; from lmops.config import SplitConfig, TokenizeConfig; from lmops.data.tokenize import tokenize_dataset;"
        f"tokenize_dataset(TokenizeConfig.model_validate_json({CFG.model_dump_json()!r}), sys.argv[1], sys.argv[2],"
        " log=lambda s: None)"
    )
    subprocess.run([sys.executable, "-c", script, str(dataset), str(tmp_path / "again")], check=True)
    assert file_table(tmp_path / "again") == file_table(tokens)


# ---------------------------------------------------------------- loading an existing tokenizer
def test_load_existing_local_tokenizer_gives_the_same_tokens(trained, tmp_path):
    import shutil

    dataset, tokens, _ = trained
    src = shutil.copytree(tokens / "tokenizer", tmp_path / "my-tokenizer")
    res = tokenize_dataset(CFG.model_copy(update={"tokenizer": str(src)}), dataset, tmp_path / "tok", **QUIET)
    assert res.manifest.counts["tokenizer"] == "loaded"
    assert res.manifest.inputs["tokenizer"]["path"] == str(src)
    for split in ("train", "val", "test"):
        assert res.manifest.files[f"{split}.bin"] == read_manifest(tokens).files[f"{split}.bin"]


def test_load_tokenizer_from_s3(trained, tmp_path, s3):
    _, bucket = s3
    dataset, tokens, docs = trained
    upload_dir(tokens / "tokenizer", f"s3://{bucket}/tokenizers/t1")
    cfg = CFG.model_copy(update={"tokenizer": f"s3://{bucket}/tokenizers/t1"})
    res = tokenize_dataset(cfg, dataset, tmp_path / "tok", **QUIET)
    local = tokenize_dataset(CFG.model_copy(update={"tokenizer": str(tokens / "tokenizer")}), dataset,
                             tmp_path / "tok-local", **QUIET)
    assert res.manifest.inputs["tokenizer"]["digest"] == local.manifest.inputs["tokenizer"]["digest"]
    info = open_tokens(res.path)
    assert info.tokens["test"] == read_manifest(tokens).counts["tokens"]["test"]
    with pytest.raises(StorageError, match="nothing-here"):
        tokenize_dataset(cfg.model_copy(update={"tokenizer": f"s3://{bucket}/nothing-here"}), dataset,
                         tmp_path / "tok2", **QUIET)


def test_large_vocab_is_packed_as_uint32(trained, tmp_path):
    """A loaded tokenizer whose ids pass 65535 gets uint32 shards that still decode exactly."""
    dataset, tokens, docs = trained
    enc = open_encoder(tokens / "tokenizer")
    enc.encode_special_tokens = False
    marker = docs["train"][0]  # a whole document as one added token: it occurs, and is no vocab key
    enc.add_tokens([f"<filler{i}>" for i in range(65_600 - enc.get_vocab_size())] + [marker])
    assert enc.token_to_id(marker) == 65_600
    big = tmp_path / "big-tokenizer"
    big.mkdir()
    enc.save(str(big / "tokenizer.json"))
    (big / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    res = tokenize_dataset(CFG.model_copy(update={"tokenizer": str(big)}), dataset, tmp_path / "tok", **QUIET)
    info = open_tokens(res.path)
    assert info.dtype == "uint32" and info.vocab_size == 65_601
    ids = np.asarray(load_split(info, "train"))
    assert ids.dtype == np.dtype("<u4") and ids.max() == 65_600
    decode = open_encoder(res.path / "tokenizer").decode
    assert documents_of(ids, info.eos_id, lambda i: decode(i, skip_special_tokens=False)) == docs["train"]


# ---------------------------------------------------------------- bad input
def test_missing_dataset_dir(tmp_path):
    with pytest.raises(ManifestError, match="no-such-dataset"):
        tokenize_dataset(CFG, tmp_path / "no-such-dataset", tmp_path / "tok", **QUIET)


def test_corrupted_dataset_shard_is_named(tmp_path):
    make_dataset(tmp_path / "ds", CORPUS)
    shard = tmp_path / "ds" / "val-00000.jsonl"
    raw = bytearray(shard.read_bytes())
    raw[20] ^= 0x01  # same size: only the sha256 can tell
    shard.write_bytes(bytes(raw))
    with pytest.raises(ManifestError, match="val-00000.jsonl"):
        tokenize_dataset(CFG, tmp_path / "ds", tmp_path / "tok", **QUIET)
    assert not (tmp_path / "tok").exists()


def test_tokenizer_without_the_eos_token(trained, tmp_path):
    dataset, tokens, _ = trained
    cfg = CFG.model_copy(update={"tokenizer": str(tokens / "tokenizer"), "eos_token": "</s>"})
    with pytest.raises(TokenizerError, match=r"tokenize.eos_token '</s>'.*not in"):
        tokenize_dataset(cfg, dataset, tmp_path / "tok", **QUIET)


def test_unloadable_or_missing_tokenizer_dir(trained, tmp_path):
    dataset, _, _ = trained
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="junk"):
        tokenize_dataset(CFG.model_copy(update={"tokenizer": str(tmp_path / "junk")}), dataset, tmp_path / "t", **QUIET)
    with pytest.raises(StorageError, match="absent"):
        tokenize_dataset(CFG.model_copy(update={"tokenizer": str(tmp_path / "absent")}), dataset, tmp_path / "t", **QUIET)


def test_empty_train_split_fails_clearly(tmp_path):
    one_doc_build = TEST_BUILD.model_copy(update={"split": SplitConfig(val=0.98, test=0.01)})
    make_dataset(tmp_path / "ds", ["the only document, which the split puts in val"], one_doc_build)
    assert split_texts(tmp_path / "ds")["train"] == [], "precondition: the hash puts the document in val"
    with pytest.raises(ManifestError, match="train split has no documents"):
        tokenize_dataset(CFG, tmp_path / "ds", tmp_path / "tok", **QUIET)
