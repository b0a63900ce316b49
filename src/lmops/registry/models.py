"""Registering model directories as MLflow model versions, and fetching them back as directories.

One version per variant (fp32, int8, pruned, student...). Each is an MLflow 3 logged model of the run that
made it (lmops.registry.source_runs: the training run, or a compress run nested under it), so the UI's
"Source run" of the version and "Registered models" of the run point at each other; its evaluation figures
are metrics of that logged model and run, its lineage ``lineage.json`` in the run. The model is a pyfunc
whose artifact ``hf_model`` is the unchanged Hugging Face directory (manifest included), so the version loads
with ``mlflow.pyfunc.load_model("models:/NAME@ALIAS")`` and downloads back into a directory any HF runtime
serves. The version's page carries a generated description (lmops.registry.version_page) and a handful of
tags to filter on: variant, gate verdict, the lineage digests, config digest, code version, pipeline run.

All or nothing: every input is verified before the server is touched; runs and artifacts are all
logged before the first version is created; each version is created with all of its tags in one call
(so a version that exists is complete); and if anything fails, the versions, logged models and runs this
call made are deleted again (metrics already added to a training run that existed before stay).
Re-registering a directory whose content is already a version of the same variant reuses that version
(content-addressed, like the stages), so a retried pipeline step adds nothing.
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
from lmops.manifest import Manifest, ManifestError, link_copy, publish_dir, verify
from lmops.registry import lineage, source_runs
from lmops.registry.alias_history import INTRO
from lmops.registry.aliases import GATE_PASSED, move_alias
from lmops.registry.server import connect, parse_models_uri, refused, resolve, validate_alias, validate_name
from lmops.registry.tracking import RegistryError
from lmops.registry.version_page import describe

PYFUNC_CODE = Path(__file__).with_name("hf_pyfunc.py")
# logged with every version (MLflow code_paths): hf_pyfunc.py loads int8 directories with it
INT8_LOADER = Path(__file__).resolve().parent.parent / "compress" / "int8_format.py"
HF_ARTIFACT = "hf_model"  # the artifact key in hf_pyfunc.py
MODEL_PATH = "model"  # the MLflow model's folder while it is staged for upload
REQUIRED_FILES = ("config.json",)


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
    manifest: Manifest
    links: list[lineage.Link]
    tags: dict[str, str]

    @property
    def digest(self) -> str:
        return self.manifest.digest


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
    # a handful of tags people filter on; the figures, verdicts and paths are metrics, description, lineage.json
    tags = {**common, **lineage.digest_tags(links), "lmops.variant": v.name, "lmops.model_digest": manifest.digest,
            GATE_PASSED: "true" if v.verdict.passed else "false"}
    if "lmops.config_digest" not in tags:
        tags["lmops.config_digest"] = sha256_json(manifest.config)
    return _Prepared(v, manifest, links, tags)


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
                      pipeline_run_id: str | None = None, tracking_uri: str | None = None,
                      experiment: str | None = None) -> Registration:
    """Register one version per variant under ``cfg.model_name``; alias the best passing one as candidate.

    ``experiment``: where the training runs are found (the train stage's ``train.experiment``) and compress
    runs are recorded; default ``cfg.experiment``, else ``lmops`` (train.experiment's default)."""
    started = time.perf_counter()
    name = validate_name(cfg.model_name)
    validate_alias(cfg.candidate_alias)
    if not variants:
        raise RegistryError(f"model {name!r}: nothing to register (no variants given)")
    if len({v.name for v in variants}) != len(variants):
        raise RegistryError(f"model {name!r}: variant names must be unique, got {[v.name for v in variants]}")
    common = {"lmops.code_version": code_version()}
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
    experiment = experiment or cfg.experiment or "lmops"
    made_runs: list[str] = []
    made_models: list[str] = []
    made_versions: list[str] = []
    try:
        logged = []
        for p in todo:
            reuse = existing.get((p.variant.name, p.digest, p.tags[GATE_PASSED]))
            if reuse is not None:
                logged.append((p, None, reuse))
                continue
            with refused(f"model {name!r} variant {p.variant.name!r}: logging {p.variant.model_dir}", server):
                run = _source_run(client, experiment, p)
                if run.created:
                    made_runs.append(run.run_id)
                model_id = _log_model(client, cfg, run, p)
            made_models.append(model_id)
            logged.append((p, (run, model_id), None))
        versions_by_digest = {tags_digest: mv.version for (_, tags_digest, _), mv in existing.items()}
        for p, made, reuse in logged:
            if made is not None:
                run, model_id = made
                description = describe(
                    model=name, variant=p.variant.name, metrics=p.variant.metrics, passed=p.variant.verdict.passed,
                    reasons=p.variant.verdict.reasons, run_name=run.name, parent_run=run.parent_name,
                    parent_version=_parent_version(p, versions_by_digest), pipeline_run_id=p.tags.get("lmops.pipeline_run_id"))
                with refused(f"model {name!r} variant {p.variant.name!r}: creating the model version", server):
                    reuse = client.create_model_version(name, f"models:/{model_id}", run_id=run.run_id, tags=p.tags,
                                                        description=description, await_creation_for=60,
                                                        model_id=model_id)
                made_versions.append(str(reuse.version))
            versions_by_digest[p.digest] = str(reuse.version)  # this registration's, for the variants after it
            result.versions.append(RegisteredVersion(p.variant.name, str(reuse.version), reuse.run_id,
                                                     p.variant.verdict.passed, reused=made is None,
                                                     model_digest=p.digest))
        best = _best_passing(result.versions, [p.variant for p in todo], cfg.rank_by)
        if best is not None:
            move_alias(client, server, name, cfg.candidate_alias, best.version, action="register",
                       reason=f"best passing variant {best.variant!r} by {cfg.rank_by}", limit=cfg.history_limit)
            result.candidate = best.version
    except BaseException as e:
        leftovers = _undo(client, name, made_versions, made_models, made_runs, created_model)
        if leftovers and isinstance(e, RegistryError):
            raise RegistryError(f"{e}; cleaning up also failed, left behind: {', '.join(leftovers)}") from e
        raise
    result.seconds = time.perf_counter() - started
    return result


def _ensure_model(client, name: str) -> bool:
    """Create the registered model unless it exists; True when this call created it."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, tags={"lmops.managed": "true"}, description=INTRO)
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


def _source_run(client, experiment: str, p: _Prepared) -> source_runs.SourceRun:
    """The training run of a trained checkpoint, else a compress run of the variant."""
    if p.manifest.stage == "train":
        return source_runs.training_run(client, experiment, Path(p.variant.model_dir), p.manifest)
    return source_runs.compress_run(client, experiment, p.variant.name, Path(p.variant.model_dir), p.manifest)


def _parent_version(p: _Prepared, versions_by_digest: dict[str, str]) -> str | None:
    """The registered version of the checkpoint a compressed variant was made from (None for a checkpoint)."""
    if p.manifest.stage == "train":
        return None
    checkpoint = next((link for link in p.links[1:] if link.role == "checkpoint"), None)
    return versions_by_digest.get(checkpoint.digest) if checkpoint else None


def _log_model(client, cfg: RegistryConfig, run: source_runs.SourceRun, p: _Prepared) -> str:
    """The variant as a logged model of ``run`` (the pyfunc with the HF directory inside), its evaluation as
    metrics of that model and run, its eval.json and lineage.json as the run's artifacts; returns the model id."""
    import mlflow.pyfunc
    from mlflow.entities import LoggedModelOutput, Metric
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    v = p.variant
    model = client.create_logged_model(run.experiment_id, name=v.name, source_run_id=run.run_id,
                                       tags={"lmops.variant": v.name, "lmops.model_digest": p.digest},
                                       model_type="causal-lm")
    try:
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
            client.log_model_artifacts(model.model_id, str(local))
            (Path(tmp) / "eval.json").write_text(json.dumps(_portable_eval(v.metrics), indent=2, sort_keys=True,
                                                            default=str) + "\n")
            (Path(tmp) / lineage.LINEAGE_FILE).write_text(json.dumps(lineage.to_document(p.links), indent=2) + "\n")
            client.log_artifact(run.run_id, str(Path(tmp) / "eval.json"))
            client.log_artifact(run.run_id, str(Path(tmp) / lineage.LINEAGE_FILE))
        client.finalize_logged_model(model.model_id, "READY")
        client.log_outputs(run.run_id, [LoggedModelOutput(model.model_id, step=0)])
        now = int(time.time() * 1000)
        # the evaluation as metrics of the model (its page) and the run (the run page's metrics)
        # the test split they were measured on, where eval.json names its tokens (MLflow wants both or neither)
        tokens = v.metrics.get("tokens_digest")
        dataset = ({"dataset_name": str(v.metrics.get("split") or "test"), "dataset_digest": tokens[:36]}
                   if isinstance(tokens, str) and tokens else {})
        client.log_batch(run.run_id, metrics=[Metric(k, x, now, 0, model_id=model.model_id, **dataset)
                                              for k, x in _numbers(v.metrics).items()])
    except BaseException:
        _quietly(lambda: client.delete_logged_model(model.model_id))
        raise
    return model.model_id


def _portable_eval(metrics: dict[str, Any]) -> dict[str, Any]:
    """eval.json as uploaded: the model directory it was measured on as its name, not this machine's path."""
    return {**metrics, "model_dir": Path(metrics["model_dir"]).name} if metrics.get("model_dir") else metrics


def _best_passing(versions: list[RegisteredVersion], variants: list[Variant], rank_by: str) -> RegisteredVersion | None:
    by_name = {v.name: v for v in variants}
    higher = GREATER_IS_BETTER.get(rank_by, False)
    scored = []
    for rv in versions:
        value = by_name[rv.variant].metrics.get(rank_by)
        if rv.passed and isinstance(value, (int, float)) and math.isfinite(value):
            scored.append((value if higher else -value, -int(rv.version), rv))
    return max(scored, key=lambda t: t[:2])[2] if scored else None


def _undo(client, name: str, versions: list[str], models: list[str], runs: list[str],
          created_model: bool) -> list[str]:
    """Delete what this call created; returns what could not be deleted."""
    left = []
    for version in versions:
        if not _quietly(lambda: client.delete_model_version(name, version)):
            left.append(f"model {name!r} version {version}")
    for model_id in models:
        if not _quietly(lambda: client.delete_logged_model(model_id)):
            left.append(f"logged model {model_id}")
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
