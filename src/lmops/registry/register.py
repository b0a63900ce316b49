"""``lmops register``: a model directory + its eval.json, gated against a baseline, then registered,
with the compress stage's variants of it when given.

The baseline is an eval.json given on the command line, else the metrics recorded on the version the
champion alias points at (so a new model is judged against what is served), else none (a first
model: only absolute gate bounds apply, and the verdict's reasons say which checks were skipped).

A compressed variant (``compressed/int8`` ...) was gated by the compress stage against the fp32 model
it came from. It passes only if that gate passed *and* its fp32 model passed against the champion: an
int8 copy of a model worse than what is served is no better a candidate than the model itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmops.config import Config
from lmops.gates import Verdict, check
from lmops.manifest import ManifestError, verify
from lmops.registry.models import Registration, Variant, register_variants
from lmops.registry.server import connect, get_alias, not_found, refused
from lmops.registry.tracking import RegistryError
from lmops.registry.version_page import version_metrics


def read_eval(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / "eval.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise RegistryError(f"{path}: eval.json not found (run `lmops evaluate` first)") from None
    except json.JSONDecodeError as e:
        raise RegistryError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise RegistryError(f"{path}: expected a JSON object of metrics")
    return data


def champion_metrics(cfg: Config, tracking_uri: str | None = None) -> tuple[dict[str, float] | None, str | None]:
    """(metrics, 'models:/NAME@champion (version N)') of the current champion, or (None, None)."""
    rc = cfg.registry
    server, client = connect(tracking_uri or rc.tracking_uri, rc.connect_attempts, rc.connect_backoff_s)
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(rc.model_name)
    except MlflowException as e:
        if not_found(e):  # no such registered model yet: a first registration
            return None, None
        raise RegistryError(f"model {rc.model_name!r}: MLflow server {server} failed: {e.message}") from e
    mv = get_alias(client, server, rc.model_name, rc.champion_alias)
    if mv is None:
        return None, None
    with refused(f"models:/{rc.model_name}@{rc.champion_alias}: reading its metrics", server):
        metrics = version_metrics(client, mv)
    return metrics, f"models:/{rc.model_name}@{rc.champion_alias} (version {mv.version})"


def register_dir(model_dir: str | Path, eval_path: str | Path, cfg: Config, *, variant: str = "fp32",
                 baseline_path: str | Path | None = None, compressed: str | Path | None = None,
                 tracking_uri: str | None = None,
                 pipeline_run_id: str | None = None) -> tuple[Registration, dict[str, Any]]:
    """Gate and register one directory (and the variants in ``compressed``); returns the registration and
    how the model was gated."""
    metrics = read_eval(eval_path)
    if baseline_path is not None:
        baseline, against = read_eval(baseline_path), str(baseline_path)
    else:
        baseline, against = champion_metrics(cfg, tracking_uri)
    verdict = check(metrics, baseline, cfg.evaluate.gate)
    todo = [Variant(variant, Path(model_dir), metrics, verdict)]
    if compressed is not None:
        todo += compressed_variants(Path(compressed), verdict)
    reg = register_variants(todo, cfg.registry, config_digest=cfg.digest(), pipeline_run_id=pipeline_run_id,
                            tracking_uri=tracking_uri, experiment=cfg.registry.experiment or cfg.train.experiment)
    return reg, {"baseline": against, "passed": verdict.passed, "reasons": verdict.reasons}


def compressed_variants(compressed: Path, source_verdict: Verdict) -> list[Variant]:
    """The variants of a compress stage output, each with its compress gate combined with its source's."""
    try:
        verify(compressed, "compress")
    except ManifestError as e:
        raise RegistryError(f"--compressed {compressed}: {e}") from None
    table = read_eval(compressed / "compress.json")
    out = []
    for row in table.get("rows", []):
        if row.get("variant") == table.get("baseline", "fp32"):
            continue
        reasons = list(row["reasons"])
        if not source_verdict.passed:
            reasons.insert(0, "FAIL source: the fp32 model it was made from failed its gates")
        out.append(Variant(row["variant"], compressed / row["path"], read_eval(compressed / row["path"]),
                           Verdict(bool(row["passed"]) and source_verdict.passed, reasons)))
    return out
