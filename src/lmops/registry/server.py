"""Talking to the registry: which server, valid names, ``models:/`` URIs, and MLflow errors made readable.

Every failure becomes a ``RegistryError`` whose message names the server and the model, alias or
version involved, so the CLI can print one line instead of an MLflow stack trace.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from lmops.registry.tracking import RegistryError, check_reachable, client_for, tracking_uri

# Stricter than MLflow (which only forbids '/' and ':'): the name also ends up in Kubernetes object
# names and URLs, so keep to characters that are safe everywhere.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
ALIAS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")
# MLflow reserves these alias forms ("latest", "v1", "V2" are version selectors)
RESERVED_ALIAS = re.compile(r"^(latest|[vV]\d+)$")


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise RegistryError(
            f"invalid registered model name {name!r}: use 1-128 letters, digits, '.', '_' or '-',"
            " starting with a letter or digit")
    return name


def validate_alias(alias: str) -> str:
    if not isinstance(alias, str) or not ALIAS_RE.match(alias) or RESERVED_ALIAS.match(alias):
        raise RegistryError(
            f"invalid alias {alias!r}: use a letter then letters, digits, '_' or '-' (not 'latest' or v<N>)")
    return alias


def resolve_uri(configured: str | None) -> str:
    uri = tracking_uri(configured)
    if not uri:
        raise RegistryError("no MLflow server configured: set registry.tracking_uri (--tracking-uri) or MLFLOW_TRACKING_URI")
    return uri


def connect(configured: str | None, attempts: int = 4, backoff: float = 0.5):
    """(uri, client) after a health check with retries; fails fast and clearly when nothing answers."""
    uri = resolve_uri(configured)
    check_reachable(uri, attempts=attempts, backoff=backoff)
    return uri, client_for(uri)


@contextmanager
def refused(what: str, server: str) -> Iterator[None]:
    """Turn MLflow and HTTP errors raised inside into a RegistryError naming ``what`` and the server."""
    import requests
    from mlflow.exceptions import MlflowException

    try:
        yield
    except (MlflowException, requests.RequestException, OSError) as e:
        text = getattr(e, "message", None) or str(e)
        raise RegistryError(f"{what}: MLflow server {server} refused or failed: {text.splitlines()[0][:500]}") from e


def not_found(e: Exception) -> bool:
    code = getattr(e, "error_code", "")
    return code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or "not found" in str(e).lower()


# ---------------------------------------------------------------- models:/ URIs
@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str | None = None
    alias: str | None = None

    def __str__(self) -> str:
        return f"models:/{self.name}@{self.alias}" if self.alias else f"models:/{self.name}/{self.version}"


def parse_models_uri(uri: str) -> ModelRef:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``."""
    if not isinstance(uri, str) or not uri.startswith("models:/"):
        raise RegistryError(f"{uri!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    rest = uri[len("models:/"):].strip("/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return ModelRef(validate_name(name), alias=validate_alias(alias))
    name, sep, version = rest.partition("/")
    if not sep or not version.isdigit():
        raise RegistryError(f"{uri!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION (a version number)")
    return ModelRef(validate_name(name), version=version)


def model_ref(model: str, version: str | None = None) -> ModelRef:
    """``NAME VERSION`` (two arguments, as ``lmops promote`` takes them) or one ``models:/`` URI."""
    if version is None:
        if not model.startswith("models:/"):
            raise RegistryError(f"{model!r}: expected NAME VERSION, models:/NAME/VERSION or models:/NAME@ALIAS")
        return parse_models_uri(model)
    if model.startswith("models:/"):
        raise RegistryError(f"{model!r} {version!r}: give NAME VERSION or one models:/ URI, not both")
    return ModelRef(validate_name(model), version=version)  # resolve() checks the version is a number


def get_version(client, server: str, name: str, version: str):
    """The model version, or an error that says what exists instead."""
    from mlflow.exceptions import MlflowException

    validate_name(name)
    if not str(version).isdigit():
        raise RegistryError(f"model {name!r}: version must be a number, got {version!r}")
    try:
        return client.get_model_version(name, str(version))
    except MlflowException as e:
        if not not_found(e):
            raise RegistryError(f"model {name!r} version {version}: MLflow server {server} failed: {e.message}") from e
    raise RegistryError(f"model {name!r} has no version {version} on {server}{_existing(client, name)}")


def get_alias(client, server: str, name: str, alias: str):
    """The version an alias points at, or None when the alias is not set (the model must exist)."""
    from mlflow.exceptions import MlflowException

    require_model(client, server, name)
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as e:
        if not_found(e):
            return None
        raise RegistryError(f"model {name!r} alias {alias!r}: MLflow server {server} failed: {e.message}") from e


def require_model(client, server: str, name: str):
    from mlflow.exceptions import MlflowException

    validate_name(name)
    try:
        return client.get_registered_model(name)
    except MlflowException as e:
        if not not_found(e):
            raise RegistryError(f"model {name!r}: MLflow server {server} failed: {e.message}") from e
    raise RegistryError(f"no registered model {name!r} on {server}")


def resolve(client, server: str, ref: ModelRef):
    if ref.alias:
        mv = get_alias(client, server, ref.name, ref.alias)
        if mv is None:
            raise RegistryError(f"{ref}: alias {ref.alias!r} is not set on model {ref.name!r} ({server})")
        return mv
    return get_version(client, server, ref.name, ref.version)


def _existing(client, name: str) -> str:
    try:
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    except Exception:  # noqa: BLE001 — only decorates an error message
        return ""
    if not versions:
        return " (it has no versions)" if _model_exists(client, name) else " (no such registered model)"
    return f" (versions: {', '.join(map(str, versions))})"


def _model_exists(client, name: str) -> bool:
    try:
        client.get_registered_model(name)
        return True
    except Exception:  # noqa: BLE001
        return False
