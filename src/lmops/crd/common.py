"""What both resources share: the group/version, field-naming spec errors, the CRD files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

from lmops.errors import LmopsError

GROUP = "lmops.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CRD_DIR = Path(__file__).resolve().parents[3] / "manifests" / "crds"


class SpecError(LmopsError, ValueError):
    """A resource's spec is not usable; ``field`` is its path as a user writes it (spec.rollout.steps[1])."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class FieldProblem(ValueError):
    """Raised in a model validator: ``rel`` is the bad field relative to the model (kfp.host, steps[1])."""

    def __init__(self, rel: str, message: str):
        super().__init__(message)
        self.rel = rel
        self.message = message


class CamelModel(BaseModel):
    """Fields in snake_case here, camelCase in the resource; unknown fields refused (the API server prunes
    them anyway, so one that reaches us is a typo in a test or a hand-made dict)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


def field_path(loc: tuple[Any, ...], root: str = "spec") -> str:
    out = root
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{to_camel(str(part))}"
    return out


def parse(model: type[CamelModel], spec: dict[str, Any] | None):
    """``spec`` -> model, or SpecError naming the first bad field (pydantic's own error text)."""
    try:
        return model.model_validate(spec or {})
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(p for p in err["loc"] if not str(p).startswith(("function-", "model-")))
        problem = (err.get("ctx") or {}).get("error")
        if isinstance(problem, FieldProblem):  # a cross-field check: name the field it is about
            sep = "" if problem.rel.startswith("[") else "."
            raise SpecError(field_path(loc) + sep + problem.rel, problem.message) from None
        raise SpecError(field_path(loc), err["msg"]) from None


def crd_path(plural: str) -> Path:
    return CRD_DIR / f"{GROUP}_{plural}.yaml"


def load_crd(plural: str) -> dict[str, Any]:
    return yaml.safe_load(crd_path(plural).read_text())
