"""Registering model directories as MLflow model versions, and fetching them back as directories.

One version per variant (fp32, int8, pruned, student...). Each is logged from its own run as a pyfunc
model whose artifact ``hf_model`` is the unchanged Hugging Face directory (manifest included), so the
version loads with ``mlflow.pyfunc.load_model("models:/NAME@ALIAS")`` and downloads back into a
directory any HF runtime serves.

All or nothing: every input is verified before the server is touched; runs and artifacts are all
logged before the first version is created; each version is created with all of its tags in one call
(so a version that exists is complete); and if anything fails, the versions and runs this call made
are deleted again. Re-registering a directory whose content is already a version of the same variant
reuses that version (content-addressed, like the stages), so a retried pipeline step adds nothing.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from lmops import __version__
from lmops.config import REPO_ROOT, RegistryConfig, sha256_json
from lmops.gates import GREATER_IS_BETTER, Verdict
from lmops.manifest import ManifestError, link_copy, publish_dir, verify
from lmops.registry import lineage
from lmops.registry.aliases import GATE_PASSED, move_alias
from lmops.registry.server import connect, parse_models_uri, refused, resolve, validate_alias, validate_name
from lmops.registry.tracking import RegistryError

PYFUNC_CODE = Path(__file__).with_name("hf_pyfunc.py")
# logged with every version (MLflow code_paths): hf_pyfunc.py loads int8 directories with it
INT8_LOADER = Path(__file__).resolve().parent.parent / "compress" / "int8_format.py"
HF_ARTIFACT = "hf_model"  # the artifact key in hf_pyfunc.py
MODEL_PATH = "model"  # where the MLflow model sits inside its run's artifacts
REQUIRED_FILES = ("config.json",)
MAX_TAG = 5000  # keep tags readable in the UI (the server allows 100k)


@dataclass
class Variant:
    """A candidate to register: its HF directory, its eval.json metrics and its gate verdict."""

    name: str
    model_dir: Path
    metrics: dict[str, Any]
    verdict: Verdict


@dataclass
class RegisteredVersion:
    variant: str
    version: str
    run_id: str
    passed: bool
    reused: bool
    model_digest: str


@dataclass
class Registration:
    name: str
    server: str
    versions: list[RegisteredVersion] = field(default_factory=list)
    candidate: str | None = None
    """Version the candidate alias now points at (None: no variant passed)."""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "server": self.server, "candidate": self.candidate,
                "seconds": round(self.seconds, 3), "versions": [vars(v) for v in self.versions]}


def code_version() -> str:
    """$LMOPS_CODE_VERSION (set in images), else the git commit of the checkout (+dirty), else the package version."""
    if os.environ.get("LMOPS_CODE_VERSION"):
        return os.environ["LMOPS_CODE_VERSION"]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"git:{sha}{'-dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return f"lmops=={__version__}"


def default_pip_requirements() -> list[str]:
    """The installed versions of what hf_pyfunc.py needs, pinned (a local tag like +cpu dropped)."""
    reqs = []
    for dist in ("mlflow", "torch", "transformers", "tokenizers", "safetensors"):
        try:
            reqs.append(f"{dist}=={metadata.version(dist).split('+')[0]}")
        except metadata.PackageNotFoundError:
            reqs.append(dist)
    return reqs


# ---------------------------------------------------------------- checks before touching the server
@dataclass
class _Prepared:
    variant: Variant
    digest: str
    tags: dict[str, str]


def _prepare(v: Variant, common: dict[str, str]) -> _Prepared:
    if not v.name or not v.name.replace("-", "").replace("_", "").isalnum():
        raise RegistryError(f"variant name {v.name!r}: use letters, digits, '-' and '_'")
    model_dir = Path(v.model_dir)
    try:
        manifest = verify(model_dir)  # every file against its digest: a corrupted directory is refused
    except ManifestError as e:
        raise RegistryError(f"refusing to register variant {v.name!r}: {e}") from None
    for rel in REQUIRED_FILES:
        if not (model_dir / rel).is_file():
            raise RegistryError(f"refusing to register variant {v.name!r}: {model_dir} has no {rel} (not a HF model directory)")
    links = lineage.chain_from_manifests(model_dir, manifest)
    tags = {**common, **lineage.to_tags(links), "lmops.variant": v.name, "lmops.model_digest": manifest.digest,
            "lmops.model_dir": str(model_dir), GATE_PASSED: "true" if v.verdict.passed else "false",
            "lmops.gate.reasons": "\n".join(v.verdict.reasons)[:MAX_TAG]}
    if "lmops.config_digest" not in tags:
        tags["lmops.config_digest"] = sha256_json(manifest.config)
    for k, value in _numbers(v.metrics).items():
        tags[f"lmops.metric.{k}"] = repr(value)
    return _Prepared(v, manifest.digest, tags)


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[k] = value
    return out


# ---------------------------------------------------------------- registration
def register_variants(variants: list[Variant], cfg: RegistryConfig, *, config_digest: str | None = None,
                      pipeline_run_id: str | None = None, tracking_uri: str | None = None) -> Registration:
    """Register one version per variant under ``cfg.model_name``; alias the best passing one as candidate."""
    started = time.perf_counter()
    name = validate_name(cfg.model_name)
    validate_alias(cfg.candidate_alias)
    if not variants:
        raise RegistryError(f"model {name!r}: nothing to register (no variants given)")
    if len({v.name for v in variants}) != len(variants):
        raise RegistryError(f"model {name!r}: variant names must be unique, got {[v.name for v in variants]}")
    common = {"lmops.code_version": code_version(), "lmops.registered_by": "lmops " + __version__}
    run_id = pipeline_run_id or os.environ.get("LMOPS_PIPELINE_RUN_ID")
    if run_id:
        common["lmops.pipeline_run_id"] = run_id
    if config_digest:
        common["lmops.config_digest"] = config_digest
    todo = [_prepare(v, common) for v in variants]
    if not cfg.register_failed:
        todo = [p for p in todo if p.variant.verdict.passed]
        if not todo:
            raise RegistryError(f"model {name!r}: no variant passed its gates, nothing registered"
                                " (registry.register_failed=false)")

    server, client = connect(tracking_uri or cfg.tracking_uri, cfg.connect_attempts, cfg.connect_backoff_s)
    result = Registration(name, server)
    with refused(f"model {name!r}: creating the registered model", server):
        created_model = _ensure_model(client, name)
        existing = _existing_versions(client, name)
    made_runs: list[str] = []
    made_versions: list[str] = []
    try:
        logged = []
        for p in todo:
            reuse = existing.get((p.variant.name, p.digest, p.tags[GATE_PASSED]))
            if reuse is not None:
                logged.append((p, reuse.run_id, None, reuse.version))
                continue
            with refused(f"model {name!r} variant {p.variant.name!r}: logging {p.variant.model_dir}", server):
                run_id, source = _log_run(client, cfg, name, p)
            made_runs.append(run_id)
            logged.append((p, run_id, source, None))
        for p, run_id, source, version in logged:
            if version is None:
                with refused(f"model {name!r} variant {p.variant.name!r}: creating the model version", server):
                    version = client.create_model_version(name, source, run_id=run_id, tags=p.tags,
                                                          await_creation_for=60).version
                made_versions.append(str(version))
            result.versions.append(RegisteredVersion(p.variant.name, str(version), run_id, p.variant.verdict.passed,
                                                     reused=source is None, model_digest=p.digest))
        best = _best_passing(result.versions, [p.variant for p in todo], cfg.rank_by)
        if best is not None:
            move_alias(client, server, name, cfg.candidate_alias, best.version, action="register",
                       reason=f"best passing variant {best.variant!r} by {cfg.rank_by}", limit=cfg.history_limit)
            result.candidate = best.version
    except BaseException as e:
        leftovers = _undo(client, name, made_versions, made_runs, created_model)
        if leftovers and isinstance(e, RegistryError):
            raise RegistryError(f"{e}; cleaning up also failed, left behind: {', '.join(leftovers)}") from e
        raise
    result.seconds = time.perf_counter() - started
    return result


def _ensure_model(client, name: str) -> bool:
    """Create the registered model unless it exists; True when this call created it."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, tags={"lmops.managed": "true"},
                                       description="Language models registered by lmops (one version per variant)")
        return True
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return False


def _existing_versions(client, name: str) -> dict[tuple[str, str, str], Any]:
    """(variant, model digest, gate verdict) -> version, for versions lmops registered earlier.

    The verdict is part of the key: a version is an immutable record of content *and* judgment, so the
    same directory judged differently (another champion as baseline) becomes a new version.
    """
    out = {}
    for mv in client.search_model_versions(f"name='{name}'"):
        tags = mv.tags or {}
        if {"lmops.variant", "lmops.model_digest", GATE_PASSED} <= tags.keys() and mv.status == "READY":
            out.setdefault((tags["lmops.variant"], tags["lmops.model_digest"], tags[GATE_PASSED]), mv)
    return out


def _log_run(client, cfg: RegistryConfig, name: str, p: _Prepared) -> tuple[str, str]:
    """A finished run holding the pyfunc model (with the HF directory inside), params and metrics."""
    import mlflow.pyfunc
    from mlflow.entities import Metric, Param
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    exp = client.get_experiment_by_name(cfg.experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(cfg.experiment)
    v = p.variant
    run = client.create_run(exp_id, run_name=f"register-{name}-{v.name}-{p.digest[:12]}",
                            tags={k: val for k, val in p.tags.items() if not k.startswith("lmops.metric.")})
    run_id = run.info.run_id
    try:
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, float(x), now, 0) for k, x in _numbers(v.metrics).items()],
                         params=[Param("variant", v.name), Param("model_dir", str(v.model_dir)[:6000]),
                                 Param("model_digest", p.digest)])
        signature = ModelSignature(
            inputs=Schema([ColSpec("string")]), outputs=Schema([ColSpec("string")]),
            params=ParamSchema([ParamSpec("max_new_tokens", "long", 32), ParamSpec("do_sample", "boolean", False),
                                ParamSpec("temperature", "double", 1.0)]))
        with tempfile.TemporaryDirectory(prefix="lmops-register-") as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "no input example": deliberate, an example would run the model
            local = Path(tmp) / MODEL_PATH
            # MLflow names the copied artifact after the source's basename (and refuses symlinks): stage it
            # as hf_model so every version has the same layout (artifacts/hf_model/). Hard links where the
            # filesystem allows, so a large model is not copied twice.
            link_copy(Path(v.model_dir), Path(tmp) / HF_ARTIFACT)
            mlflow.pyfunc.save_model(local, python_model=str(PYFUNC_CODE), code_paths=[str(INT8_LOADER)],
                                     artifacts={HF_ARTIFACT: str(Path(tmp) / HF_ARTIFACT)},
                                     pip_requirements=cfg.pip_requirements or default_pip_requirements(),
                                     signature=signature, metadata={"lmops.variant": v.name, "lmops.model_digest": p.digest})
            (Path(tmp) / "eval.json").write_text(json.dumps(v.metrics, indent=2, sort_keys=True, default=str) + "\n")
            client.log_artifacts(run_id, str(local), MODEL_PATH)
            client.log_artifact(run_id, str(Path(tmp) / "eval.json"))
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        _quietly(lambda: client.delete_run(run_id))
        raise
    return run_id, f"{run.info.artifact_uri.rstrip('/')}/{MODEL_PATH}"


def _best_passing(versions: list[RegisteredVersion], variants: list[Variant], rank_by: str) -> RegisteredVersion | None:
    by_name = {v.name: v for v in variants}
    higher = GREATER_IS_BETTER.get(rank_by, False)
    scored = []
    for rv in versions:
        value = by_name[rv.variant].metrics.get(rank_by)
        if rv.passed and isinstance(value, (int, float)) and math.isfinite(value):
            scored.append((value if higher else -value, -int(rv.version), rv))
    return max(scored, key=lambda t: t[:2])[2] if scored else None


def _undo(client, name: str, versions: list[str], runs: list[str], created_model: bool) -> list[str]:
    """Delete what this call created; returns what could not be deleted."""
    left = []
    for version in versions:
        if not _quietly(lambda: client.delete_model_version(name, version)):
            left.append(f"model {name!r} version {version}")
    for run_id in runs:
        if not _quietly(lambda: client.delete_run(run_id)):
            left.append(f"run {run_id}")
    # the registered model too, if this call made it and it is still empty (another registration may
    # have added versions meanwhile: those are not ours to delete)
    if created_model and not left and not _quietly(lambda: client.search_model_versions(f"name='{name}'"), True):
        _quietly(lambda: client.delete_registered_model(name))
    return left


def _quietly(fn, failed: Any = False) -> Any:
    """fn()'s result (True when it returns None), or ``failed`` when it raises."""
    try:
        out = fn()
        return True if out is None else out
    except Exception:  # noqa: BLE001 — clean-up after a failure must not hide the failure itself
        return failed


# ---------------------------------------------------------------- download
def download_model(uri: str, dest: Path, *, tracking_uri: str | None = None) -> Path:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` -> a verified local HF model directory at ``dest``.

    The directory is checked against its manifest after download and published in one rename; a
    ``dest`` that already holds the same content is returned as is.
    """
    import mlflow.artifacts

    ref = parse_models_uri(uri)
    dest = Path(dest)
    server, client = connect(tracking_uri)
    mv = resolve(client, server, ref)
    digest = (mv.tags or {}).get("lmops.model_digest")
    if digest and (dest / "manifest.json").is_file():
        try:
            if verify(dest).digest == digest:
                return dest
        except ManifestError:
            pass  # replaced below
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}.download-", dir=dest.parent) as tmp:
        with refused(f"{ref} (version {mv.version}): downloading", server):
            src = client.get_model_version_download_uri(ref.name, mv.version).rstrip("/")
            got = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{src}/{_hf_artifact_path(src, server, tmp)}",
                                                           dst_path=tmp, tracking_uri=server))
        try:
            m = verify(got)
        except ManifestError as e:
            raise RegistryError(f"{ref} (version {mv.version}): the downloaded model fails verification: {e}") from None
        if digest and m.digest != digest:
            raise RegistryError(f"{ref} (version {mv.version}): downloaded content {m.digest[:12]} is not the"
                                f" registered {digest[:12]}")
        publish_dir(got, dest)
    return dest


def _hf_artifact_path(model_uri: str, server: str, tmp: str) -> str:
    """Where the HF directory sits inside the MLflow model, as its MLmodel file says."""
    import mlflow.artifacts
    import yaml

    local = mlflow.artifacts.download_artifacts(artifact_uri=f"{model_uri}/MLmodel", dst_path=tmp, tracking_uri=server)
    try:
        return yaml.safe_load(Path(local).read_text())["flavors"]["python_function"]["artifacts"][HF_ARTIFACT]["path"]
    except (TypeError, KeyError, yaml.YAMLError):
        raise RegistryError(f"{model_uri}: not an lmops model (its MLmodel has no {HF_ARTIFACT} artifact)") from None
