"""Typed configuration: one YAML file, one section per stage.

Every field has a type, a default and a docstring. Unknown keys and wrong types fail with a
message that names the YAML path (``train.lr: expected a number, got "fast"``) and the file,
so a typo never silently falls back to a default. Presets live in ``configs/``.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from pydantic import BaseModel, Field, ValidationError

from lmops.config.base import DEFAULT_PRESET, PRESETS_DIR, REPO_ROOT, ConfigError, Section, sha256_json
from lmops.config.compress import CompressConfig, DistillConfig, Int8Config, PruneConfig
from lmops.config.data import BuildConfig, DedupConfig, RayDataConfig, SplitConfig, TokenizeConfig
from lmops.config.evaluate import EvaluateConfig, GateRule
from lmops.config.image import ImageConfig
from lmops.config.kuberay import KubeRayConfig
from lmops.config.pipeline import PipelineConfig, S3SecretRef, TaskResources
from lmops.config.registry import RegistryConfig
from lmops.config.serve import DeployConfig, DeployResources, ServeConfig
from lmops.config.train import ModelConfig, TrainConfig
from lmops.config.yaml_load import safe_load_unique

__all__ = [
    "DEFAULT_PRESET", "PRESETS_DIR", "REPO_ROOT", "BuildConfig", "CompressConfig", "Config", "ConfigError",
    "DedupConfig", "DeployConfig", "DeployResources", "DistillConfig", "EvaluateConfig", "GateRule", "ImageConfig", "Int8Config",
    "KubeRayConfig", "ModelConfig", "PipelineConfig", "S3SecretRef", "TaskResources", "PruneConfig", "RayDataConfig", "RegistryConfig", "Section", "ServeConfig", "SplitConfig",
    "TokenizeConfig", "TrainConfig", "apply_override", "config_from_dict", "format_validation_error", "load_config",
    "resolve_preset", "sha256_json",
]


# ---------------------------------------------------------------- the whole file
class Config(Section):
    name: str = DEFAULT_PRESET
    """Name of this configuration (a preset name, or your own)."""
    workdir: str = "runs"
    """Where the stage commands (and `lmops run --runner inprocess`) put stage outputs when no --out is given."""
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
    kuberay: KubeRayConfig = Field(default_factory=KubeRayConfig)
    image: ImageConfig = Field(default_factory=ImageConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)


# ---------------------------------------------------------------- loading
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
        raw = safe_load_unique(path.read_text()) or {}
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
