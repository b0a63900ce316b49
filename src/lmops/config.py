"""Typed configuration: one YAML file, one section per stage.

Every field has a type, a default and a docstring. Unknown keys and wrong types fail with a
message that names the YAML path (``train.lr: expected a number, got "fast"``) and the file,
so a typo never silently falls back to a default. Presets live in ``configs/``.
"""

from __future__ import annotations

from lmops.errors import LmopsError

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

REPO_ROOT = Path(__file__).resolve().parents[2]
PRESETS_DIR = REPO_ROOT / "configs"
DEFAULT_PRESET = "tiny"


class ConfigError(LmopsError, ValueError):
    """A configuration that cannot be used; the message names the file and YAML path."""


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, docstrings are per field."""

    model_config = ConfigDict(extra="forbid", validate_default=True, use_attribute_docstrings=True)

    def digest(self) -> str:
        """sha256 of the section's canonical JSON: part of a stage's cache key."""
        return sha256_json(self.model_dump(mode="json"))


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
    """Field of a .jsonl record that holds the text."""
    parquet_column: str = "text"
    """Column of a .parquet file that holds the text."""
    invalid_utf8: Literal["replace", "drop"] = "replace"
    """Invalid UTF-8: replace the bad bytes with U+FFFD (counted), or drop the file/record (counted)."""
    bad_records: Literal["skip", "fail"] = "skip"
    """A JSONL line that is not JSON or lacks the field: skip and count it, or fail the stage."""
    min_chars: int = Field(32, ge=0)
    """Documents shorter than this after cleaning are dropped."""
    max_chars: int = Field(200_000, ge=1)
    """Documents longer than this after cleaning are dropped."""
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    shard_max_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    """Size cap of one output .jsonl shard."""

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


# ---------------------------------------------------------------- stage 3: model + train
class ModelConfig(Section):
    preset: Literal["tiny", "small", "gpt2-124m", "custom"] = "tiny"
    """Named size; 'custom' uses the fields below as given. A preset fills fields left unset."""
    pretrained: str | None = None
    """A Hugging Face model directory (local or s3://) to fine-tune instead of building from config."""
    n_layer: int | None = Field(None, ge=1)
    """Transformer blocks."""
    n_head: int | None = Field(None, ge=1)
    """Attention heads."""
    n_kv_head: int | None = Field(None, ge=1)
    """Key/value heads (grouped-query attention when below n_head)."""
    d_model: int | None = Field(None, ge=8)
    """Hidden size."""
    d_ff: int | None = Field(None, ge=8)
    """MLP intermediate size."""
    max_seq_len: int | None = Field(None, ge=8)
    """Maximum positions (rope)."""
    rope_theta: float = Field(10000.0, gt=0)
    """RoPE base."""
    tie_embeddings: bool = True
    """Share the input embedding and the LM head."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Attention dropout."""


class TrainConfig(Section):
    seed: int = 1337
    """Seeds model init and batch sampling."""
    max_steps: int = Field(200, ge=1)
    """Optimizer steps."""
    micro_batch_size: int = Field(8, ge=1)
    """Sequences per worker per micro-step."""
    grad_accum: int = Field(1, ge=1)
    """Micro-steps per optimizer step."""
    block_size: int = Field(128, ge=8)
    """Tokens per training sequence."""
    lr: float = Field(1e-3, gt=0)
    """Peak learning rate."""
    min_lr: float = Field(1e-4, ge=0)
    """Learning rate at the end of the cosine decay."""
    warmup_steps: int = Field(20, ge=0)
    """Linear warm-up steps."""
    weight_decay: float = Field(0.1, ge=0)
    """AdamW weight decay (matrices only)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    grad_clip: float = Field(1.0, ge=0)
    """Clip the global gradient norm to this (0 = off)."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Autocast dtype: auto = bf16 on CUDA, fp32 on CPU."""
    compile: bool = False
    """torch.compile the model."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the single-process loop runs; Ray workers follow use_gpu."""
    log_every: int = Field(10, ge=1)
    """Steps between log lines."""
    eval_every: int = Field(50, ge=1)
    """Steps between validation-loss estimates."""
    eval_batches: int = Field(10, ge=1)
    """Batches per validation-loss estimate."""
    num_workers: int = Field(1, ge=1)
    """Ray Train workers (DDP ranks)."""
    use_gpu: bool = False
    """One GPU per worker."""
    resources_per_worker: dict[str, float] = Field(default_factory=dict)
    """Extra Ray resources per worker, e.g. {CPU: 4}."""
    checkpoint_every: int = Field(100, ge=1)
    """Steps between checkpoints."""
    keep_checkpoints: int = Field(2, ge=1)
    """Checkpoints kept (the latest K)."""
    resume: Literal["auto", "never"] = "auto"
    """auto: continue from the latest complete checkpoint of the same run."""
    max_failures: int = Field(2, ge=0)
    """Ray Train restarts of failed workers before the run fails."""
    storage_path: str | None = None
    """Ray checkpoint storage (local dir or s3://); default: <workdir>/ray."""
    mlflow_tracking_uri: str | None = None
    """Log params/metrics to this MLflow server; default: $MLFLOW_TRACKING_URI, else no tracking."""
    experiment: str = "lmops"
    """MLflow experiment name."""


class GateRule(Section):
    """Conditions one metric must meet. Absolute bounds always apply; the others compare with a baseline
    (e.g. the champion's eval.json) and are skipped, with a note, when there is none."""

    greater_is_better: bool | None = None
    """Direction of the metric; None = the known default for its name (perplexity: lower is better…)."""
    min: float | None = None
    """Candidate must be >= this."""
    max: float | None = None
    """Candidate must be <= this."""
    min_ratio: float | None = Field(None, gt=0)
    """candidate / baseline must be >= this."""
    max_ratio: float | None = Field(None, gt=0)
    """candidate / baseline must be <= this."""
    max_increase: float | None = Field(None, ge=0)
    """candidate - baseline must be <= this (absolute units of the metric)."""
    max_decrease: float | None = Field(None, ge=0)
    """baseline - candidate must be <= this (absolute units of the metric)."""
    max_regression: float | None = Field(None, ge=0)
    """Relative worsening allowed, in the metric's direction: 0.01 = at most 1% worse than the baseline."""
    min_improvement: float | None = Field(None, ge=0)
    """Relative improvement required, in the metric's direction: 0.01 = at least 1% better than the baseline."""


def _default_gate() -> dict[str, GateRule]:
    # a new model may not be more than 1% worse than the champion in perplexity; speed and size gates
    # are opted into per stage (compression), since timings vary between machines
    return {"perplexity": GateRule(max_regression=0.01)}


class EvaluateConfig(Section):
    block_size: int = Field(128, ge=8)
    """Tokens per perplexity block."""
    stride: int | None = Field(None, ge=1)
    """Start-to-start distance of blocks; default = block_size (no overlap)."""
    max_blocks: int | None = Field(None, ge=1)
    """Cap on blocks scored (None = the whole test split)."""
    batch_size: int = Field(8, ge=1)
    """Blocks per forward pass."""
    latency_prompt_tokens: int = Field(32, ge=1)
    """Prompt length for the generation-latency probe."""
    latency_new_tokens: int = Field(32, ge=1)
    """New tokens generated by the latency probe."""
    latency_repeats: int = Field(3, ge=1)
    """Latency probe repetitions (median reported, after one warm-up run)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where evaluation runs (auto = cuda when visible). Compare timings only across the same device."""
    gate: dict[str, GateRule] = Field(default_factory=_default_gate)
    """Per-metric rules a candidate's eval.json must meet against the baseline (lmops.gates.check)."""


# ---------------------------------------------------------------- stage 5: compress
class Int8Config(Section):
    """Dynamic int8 quantization of the nn.Linear layers (weights int8 on disk, activations quantized per call)."""

    enabled: bool = True
    """Produce the int8/ variant."""
    per_channel: bool = True
    """One scale per output row instead of one per matrix: a little more storage, much less rounding error."""
    include_lm_head: bool = True
    """Quantize the LM head too (the largest matmul of a small-vocabulary model's prefill). A tied head then
    gets an int8 copy of the embedding; the input embedding itself stays fp32."""


class PruneConfig(Section):
    """Global magnitude pruning of the transformer's linear weights (embeddings and LM head are left dense)."""

    enabled: bool = True
    """Produce the pruned/ variant."""
    sparsity: float = Field(0.3, ge=0, lt=1)
    """Fraction of the prunable weights set to zero, chosen by smallest |w| across all of them at once."""
    recovery_steps: int = Field(30, ge=0)
    """Fine-tune steps after pruning (0 = none); the mask is re-applied after every optimizer step."""
    recovery_lr: float = Field(3e-4, gt=0)
    """Constant learning rate of the recovery fine-tune (small: the model is already trained)."""


class DistillConfig(Section):
    """A smaller student trained on the teacher's softened distribution plus the LM loss, through Ray Train."""

    enabled: bool = True
    """Produce the student/ variant."""
    n_layer: int | None = Field(None, ge=1)
    """Student blocks; None = half the teacher's (at least 1)."""
    d_model: int | None = Field(None, ge=8)
    """Student hidden size; None = the teacher's."""
    n_head: int | None = Field(None, ge=1)
    """Student attention heads; None = the teacher's."""
    n_kv_head: int | None = Field(None, ge=1)
    """Student key/value heads; None = the student's n_head when it differs from the teacher's, else the teacher's."""
    d_ff: int | None = Field(None, ge=8)
    """Student MLP size; None = the teacher's."""
    init: Literal["teacher_layers", "random"] = "teacher_layers"
    """teacher_layers: copy the embedding and evenly spaced blocks of the teacher (needs the teacher's width;
    falls back to random when the shapes differ); random: a fresh init seeded by train.seed."""
    temperature: float = Field(2.0, gt=0)
    """Softmax temperature T of both distributions in the KL term."""
    alpha: float = Field(0.5, ge=0, le=1)
    """Weight of T^2 * KL(teacher || student); the LM cross-entropy gets 1 - alpha."""
    steps: int = Field(200, ge=1)
    """Optimizer steps of the student's training (the other train.* settings are the teacher's)."""
    lr: float = Field(2e-3, gt=0)
    """Peak learning rate of the student."""
    warmup_steps: int = Field(10, ge=0)
    """Linear warm-up steps of the student."""


_COMPRESS_VARIANTS = ("int8", "pruned", "student")


def _default_compress_gates() -> dict[str, dict[str, GateRule]]:
    # budgets relative to the fp32 model the variants were made from (the gate's baseline)
    return {"int8": {"perplexity": GateRule(max_ratio=1.02)},
            "pruned": {"perplexity": GateRule(max_ratio=1.10)},
            "student": {"perplexity": GateRule(max_ratio=1.35)}}


class CompressConfig(Section):
    """Stage 5: checkpoint/ -> int8/, pruned/, student/, each scored by lmops.evaluate and gated against fp32."""

    int8: Int8Config = Field(default_factory=Int8Config)
    prune: PruneConfig = Field(default_factory=PruneConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    gates: dict[str, dict[str, GateRule]] = Field(default_factory=_default_compress_gates)
    """Per variant (int8, pruned, student), lmops.gates rules of its eval.json against the fp32 model's;
    a variant that fails may not be registered as passing."""

    @model_validator(mode="after")
    def _known_variants(self) -> "CompressConfig":
        unknown = sorted(set(self.gates) - set(_COMPRESS_VARIANTS))
        if unknown:
            raise ValueError(f"gates for unknown variant(s) {unknown}; variants: {', '.join(_COMPRESS_VARIANTS)}")
        return self


# ---------------------------------------------------------------- stage 6: register
class RegistryConfig(Section):
    tracking_uri: str | None = None
    """MLflow server (tracking and model registry); default: $MLFLOW_TRACKING_URI."""
    model_name: str = "lmops-lm"
    """Registered model name: letters, digits, '.', '_' and '-' (it also names Kubernetes objects)."""
    experiment: str = "lmops-registry"
    """MLflow experiment that holds the runs the registered versions are logged from."""
    candidate_alias: str = "candidate"
    """Alias set on the best passing version of a registration."""
    champion_alias: str = "champion"
    """Alias of the served version: its metrics are the gate baseline when no baseline is given."""
    rank_by: str = "perplexity"
    """Metric that picks the best passing version for the candidate alias (direction as in lmops.gates)."""
    register_failed: bool = True
    """Also register variants that failed their gates (tagged lmops.gate.passed=false; promote refuses them)."""
    connect_attempts: int = Field(4, ge=1, le=20)
    """Health-check attempts before the server is declared unreachable."""
    connect_backoff_s: float = Field(0.5, gt=0, le=30)
    """First wait between attempts; doubles after each one."""
    history_limit: int = Field(50, ge=2, le=1000)
    """Alias-history entries kept per alias (a tag on the registered model)."""
    pip_requirements: list[str] | None = None
    """Requirements recorded with the MLflow model; default: the installed torch, transformers,
    tokenizers, safetensors and mlflow versions, pinned."""


# ---------------------------------------------------------------- stage 7: serve + deploy
class ServeConfig(Section):
    """The KServe model server (``lmops serve``): limits, micro-batching and where it listens."""

    host: str = "127.0.0.1"
    """Address the REST server binds (KServe itself always binds 0.0.0.0); 0.0.0.0 inside a container."""
    port: int = Field(8080, ge=0, le=65535)
    """REST port (0 = any free port, logged at start)."""
    model_name: str = Field("lmops", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    """Name in the protocol URLs (/v1/models/NAME:predict, /v2/models/NAME/infer, OpenAI "model")."""
    max_new_tokens: int = Field(256, ge=1)
    """Upper bound a request may ask for (max_new_tokens / max_tokens); above it is a 400."""
    default_max_new_tokens: int = Field(32, ge=1)
    """New tokens when a request names none."""
    max_prompt_tokens: int = Field(512, ge=1)
    """Longest prompt accepted, in tokens (prompt + new tokens must also fit the model's positions)."""
    max_batch_size: int = Field(16, ge=1)
    """Most requests generated together in one micro-batch."""
    max_wait_ms: float = Field(2.0, ge=0, le=1000)
    """How long the first request of a batch waits for company when nothing else is queued. Requests that
    arrive while a batch runs join the next one without waiting, so this only adds latency when idle."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where generation runs (auto = cuda when visible)."""
    threads: int | None = Field(None, ge=1)
    """torch intra-op threads (None = torch's default)."""
    warmup_prompt: str = Field("Hello", min_length=1)
    """Prompt of the warm-up generation that must succeed before the server reports ready."""
    cache_dir: str = ".state/serve-cache"
    """Where s3:// and models:/ model directories are downloaded before loading."""

    @model_validator(mode="after")
    def _default_within_limit(self) -> "ServeConfig":
        if self.default_max_new_tokens > self.max_new_tokens:
            raise ValueError(f"default_max_new_tokens ({self.default_max_new_tokens}) is above max_new_tokens"
                             f" ({self.max_new_tokens})")
        return self


_CREDENTIAL_WORDS = ("SECRET", "PASSWORD", "TOKEN", "ACCESS_KEY", "CREDENTIAL", "SESSION_KEY")


class DeployResources(Section):
    """Requests and limits of the predictor container (Kubernetes quantities)."""

    cpu: str = "1"
    """CPU request and limit, e.g. "500m", "2"."""
    memory: str = "2Gi"
    """Memory request and limit."""
    gpus: int = Field(0, ge=0)
    """nvidia.com/gpu count (0 = none)."""


class DeployConfig(Section):
    """The deploy stage: a local server process, or an InferenceService on Kubernetes."""

    target: Literal["local", "kubernetes"] = "local"
    """local: start `lmops serve` as a subprocess; kubernetes: server-side apply an InferenceService."""
    model: str | None = None
    """Model URI (directory, s3://, models:/NAME@ALIAS); the CLI's --model overrides it."""
    ready_timeout_s: float = Field(120.0, gt=0)
    """local: how long to wait for the server to report ready before failing (and stopping it)."""
    smoke_prompt: str = Field("Hello", min_length=1)
    """local: prompt of the smoke request sent once the server is ready."""
    name: str = Field("lmops-lm", pattern=r"^[a-z]([-a-z0-9]*[a-z0-9])?$", max_length=45)
    """InferenceService name (a DNS label; KServe appends suffixes, so at most 45 characters)."""
    namespace: str = "default"
    """Namespace of the InferenceService."""
    runtime: Literal["lmops", "huggingface"] = "lmops"
    """lmops: our image runs `lmops serve` (v1, v2, OpenAI); huggingface: KServe's HF runtime on the same dir."""
    image: str = "lmops:latest"
    """Predictor image for runtime=lmops."""
    storage_uri: str | None = None
    """storageUri KServe's storage initializer downloads to /mnt/models; default: the model URI when it is
    s3:// (models:/ URIs are resolved by the lmops container itself through MLflow)."""
    service_account: str | None = None
    """ServiceAccount whose annotated Secret holds the S3 credentials (KServe's storage initializer reads it)."""
    s3_secret: str | None = None
    """Secret exposed to the lmops container with envFrom (AWS_* keys) for models:/ or direct s3:// reads."""
    env: dict[str, str] = Field(default_factory=dict)
    """Extra plain environment variables; credentials are refused here (use service_account / s3_secret)."""
    resources: DeployResources = Field(default_factory=DeployResources)
    min_replicas: int = Field(1, ge=0)
    """Fewest predictor replicas (0 = scale to zero, serverless mode only)."""
    max_replicas: int = Field(1, ge=1)
    """Most predictor replicas."""
    canary_traffic_percent: int | None = Field(None, ge=0, le=100)
    """Percent of traffic to the new revision (None = all of it); the rollout moves it, then clears it."""

    @model_validator(mode="after")
    def _replicas_ordered(self) -> "DeployConfig":
        secret_like = [k for k in self.env if any(w in k.upper() for w in _CREDENTIAL_WORDS)]
        if secret_like:
            raise ValueError(f"env {secret_like} look like credentials; never inline them in a manifest: use"
                             " deploy.service_account (S3 for the storage initializer) or deploy.s3_secret")
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})")
        return self


# ---------------------------------------------------------------- the whole file
class Config(Section):
    name: str = DEFAULT_PRESET
    """Name of this configuration (a preset name, or your own)."""
    workdir: str = "runs"
    """Where `lmops run` puts stage outputs when no --out is given."""
    cache_dir: str | None = ".state/cache"
    """Content-addressed store of finished stage outputs (None = no cross-run cache)."""
    build: BuildConfig = Field(default_factory=BuildConfig)
    tokenize: TokenizeConfig = Field(default_factory=TokenizeConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    compress: CompressConfig = Field(default_factory=CompressConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    deploy: DeployConfig = Field(default_factory=DeployConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)


# ---------------------------------------------------------------- loading
def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def resolve_preset(name_or_path: str | Path | None) -> Path:
    """A preset name (``tiny``) or a path to a YAML file."""
    if name_or_path is None:
        name_or_path = DEFAULT_PRESET
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        return path
    preset = PRESETS_DIR / f"{name_or_path}.yaml"
    if not preset.is_file():
        known = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown preset {str(name_or_path)!r}; presets: {', '.join(known)}")
    return preset


def load_config(name_or_path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a preset or YAML file, apply ``key.path=value`` overrides, validate."""
    path = resolve_preset(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    for item in overrides or []:
        apply_override(raw, item)
    return config_from_dict(raw, source=str(path))


def apply_override(raw: dict, item: str) -> None:
    """``train.lr=3e-4`` -> raw["train"]["lr"] = 3e-4 (the value is parsed as YAML)."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected KEY.PATH=VALUE, e.g. train.lr=3e-4")
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {item!r}: {part} is not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(value)
    except yaml.YAMLError:
        node[parts[-1]] = value


def config_from_dict(raw: dict, source: str = "<config>") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None


_EXPECTED = {
    "float_parsing": "expected a number",
    "float_type": "expected a number",
    "int_parsing": "expected an integer",
    "int_type": "expected an integer",
    "int_from_float": "expected an integer",
    "bool_parsing": "expected true or false",
    "bool_type": "expected true or false",
    "string_type": "expected a string",
    "list_type": "expected a list",
    "dict_type": "expected a mapping",
    "model_type": "expected a mapping",
    "tuple_type": "expected a list",
}


def format_validation_error(e: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration ({e.error_count()} problem(s)):"]
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<top level>"
        kind = err["type"]
        got = json.dumps(err.get("input"), default=str)
        if kind == "extra_forbidden":
            msg = f"unknown key {loc.rsplit('.', 1)[-1]!r}{_allowed_keys_hint(err['loc'])}"
        elif kind in _EXPECTED:
            msg = f"{_EXPECTED[kind]}, got {got}"
        elif kind == "literal_error":
            msg = f"expected one of {err['ctx']['expected']}, got {got}"
        else:
            msg = f"{err['msg']}, got {got}" if "input" in err else err["msg"]
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def _allowed_keys_hint(loc: tuple) -> str:
    """For an unknown key, list the keys its section does allow."""
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return ""
        model = ann
    return f" (allowed: {', '.join(model.model_fields)})"
