"""Stages 1-2: build (raw sources -> dataset/) and tokenize (dataset/ -> tokens/)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from lmops.config.base import Section
from lmops.config.k8s import quantity


Engine = Literal["local", "ray", "auto"]


# ---------------------------------------------------------------- the engine of stages 1-2
class RayDataConfig(Section):
    """How ``engine: ray`` spreads a data stage over Ray Data (none of it changes the output bytes)."""

    num_workers: int | None = Field(None, ge=1)
    """CPUs Ray Data may use at once (one task per CPU); None = every CPU of the Ray cluster."""
    block_mb: float = Field(16.0, gt=0, le=4096)
    """Tokenize: MB of dataset text per encode task. Build reads one source file per task, so its blocks
    are the files: split very large files to bound a worker's memory."""
    worker_replicas: int = Field(2, ge=0)
    """launcher: kuberay: data worker pods of the stage's RayJob (0 = the head pod does the work)."""
    worker_cpu: str = "2"
    """launcher: kuberay: CPU limit of each data worker pod (its Ray CPUs, as KubeRay derives them)."""
    worker_cpu_request: str | None = None
    """launcher: kuberay: CPU request of each data worker pod when lower than its limit; None = the limit."""
    worker_memory: str = "8Gi"
    """launcher: kuberay: memory request and limit of each data worker pod (one source file's documents, or one
    shuffle partition, per task: see block_mb)."""

    @field_validator("worker_cpu", "worker_memory", mode="before")
    @classmethod
    def _quantity(cls, v: Any) -> str:
        return quantity(v)

    @field_validator("worker_cpu_request", mode="before")
    @classmethod
    def _optional_quantity(cls, v: Any) -> str | None:
        return None if v is None else quantity(v)


# ---------------------------------------------------------------- stage 1: build
class SplitConfig(Section):
    val: float = Field(0.05, ge=0, lt=1)
    """Fraction of documents in the validation split."""
    test: float = Field(0.05, ge=0, lt=1)
    """Fraction of documents in the test split."""
    calibration: float = Field(0.0, ge=0, lt=1)
    """Fraction held out for quantization calibration (0 = no calibration split)."""
    salt: str = "lmops-split-v1"
    """Mixed into the document hash that decides the split; change it to draw a new split."""

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> "SplitConfig":
        if self.val + self.test + self.calibration >= 1:
            raise ValueError("val + test + calibration must be below 1 (training needs documents)")
        return self


class DedupConfig(Section):
    exact: bool = True
    """Drop documents whose normalized text hashes equal an earlier one."""
    near: bool = True
    """Drop near-duplicates found with MinHash + LSH (datasketch)."""
    threshold: float = Field(0.85, gt=0, le=1)
    """Estimated Jaccard similarity of word shingles at or above which two documents are near-duplicates."""
    num_perm: int = Field(128, ge=16, le=1024)
    """MinHash permutations: more is more precise and slower."""
    shingle_words: int = Field(5, ge=1, le=32)
    """Words per shingle."""


class BuildConfig(Section):
    sources: list[str] = Field(default_factory=lambda: [".state/sample-corpus"])
    """Files, directories, globs or s3:// prefixes holding the raw text."""
    txt_mode: Literal["file", "paragraph"] = "file"
    """.txt files: one document per file, or one per blank-line separated paragraph."""
    jsonl_field: str = "text"
    """Field of a .jsonl record (or a .json file's record) that holds the text."""
    parquet_column: str = "text"
    """Column of a .parquet file that holds the text."""
    invalid_utf8: Literal["replace", "drop"] = "replace"
    """Invalid UTF-8: replace the bad bytes with U+FFFD (counted), or drop the file/record (counted)."""
    bad_records: Literal["skip", "fail"] = "skip"
    """A JSON record that is not JSON or lacks the field (or a .json array that is not JSON): skip and count
    it, or fail the stage."""
    min_chars: int = Field(32, ge=0)
    """Documents shorter than this after cleaning are dropped."""
    max_chars: int = Field(200_000, ge=1)
    """Documents longer than this after cleaning are dropped."""
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    shard_max_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    """Size cap of one output .jsonl shard."""
    engine: Engine = "local"
    """local: one process (all documents in memory, for corpora up to a few GB); ray: Ray Data, streaming, on
    the Ray that RAY_ADDRESS names (or a local one), or with the pipeline's ``launcher: kuberay`` on a RayJob
    of its own (pods sized by ``ray``); auto: ray when RAY_ADDRESS is set or the launcher is kuberay, else
    local. Both give the same bytes."""
    ray: RayDataConfig = Field(default_factory=RayDataConfig)

    @model_validator(mode="after")
    def _lengths_ordered(self) -> "BuildConfig":
        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) is above max_chars ({self.max_chars})")
        return self


# ---------------------------------------------------------------- stage 2: tokenize
class TokenizeConfig(Section):
    tokenizer: str | None = None
    """An existing tokenizer directory (local or s3://) to load instead of training one."""
    vocab_size: int = Field(8192, ge=260, le=1_000_000)
    """Vocabulary size of the trained byte-level BPE (256 bytes + merges + special tokens)."""
    min_frequency: int = Field(2, ge=1)
    """A pair must occur this often to become a merge."""
    eos_token: str = "<|endoftext|>"
    """Separates documents in the packed shards; also BOS."""
    pad_token: str = "<|pad|>"
    """Padding token (inside the vocabulary, so generation never indexes past it)."""
    extra_special_tokens: list[str] = Field(default_factory=list)
    """More special tokens to reserve."""
    batch_size: int = Field(1024, ge=1)
    """Documents per encode_batch call (the Rust encoder parallelises within a batch)."""
    model_max_length: int = Field(1024, ge=1)
    """model_max_length saved with the tokenizer (the train stage may lower it to the model's context)."""
    train_sample_mb: float | None = Field(1024.0, gt=0)
    """Train the tokenizer on the train split's first documents up to this many MB of text (dataset order,
    hence deterministic); None = the whole split. Both engines use the same sample."""
    engine: Engine = "local"
    """local: encode in this process; ray: encode on Ray Data workers (with ``launcher: kuberay``, on a RayJob
    of its own); auto: ray when RAY_ADDRESS is set or the launcher is kuberay. Both write the same bytes."""
    ray: RayDataConfig = Field(default_factory=RayDataConfig)
