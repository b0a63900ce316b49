"""The base of every config section, the error type, and where presets live."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from lmops.errors import LmopsError

REPO_ROOT = Path(__file__).resolve().parents[3]
PRESETS_DIR = REPO_ROOT / "configs"
DEFAULT_PRESET = "tiny"


class ConfigError(LmopsError, ValueError):
    """A configuration that cannot be used; the message names the file and YAML path."""


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, docstrings are per field."""

    model_config = ConfigDict(extra="forbid", validate_default=True, use_attribute_docstrings=True)

    def digest(self) -> str:
        """sha256 of the section's canonical JSON: part of a stage's cache key."""
        return sha256_json(self.model_dump(mode="json"))
