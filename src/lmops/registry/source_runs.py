"""The run a registered version comes from, so the MLflow UI links version and run both ways.

- a trained checkpoint's version comes from its **training run** (the train stage's ``lmops-train-<key>``,
  found by its ``lmops.train_key`` tag): the run page lists the version under "Registered models" and the
  version page's "Source run" is the run with the loss curves;
- a compressed variant's version comes from a **compress run** of its own (``lmops-compress-<variant>-<digest>``),
  nested under the training run of the checkpoint it was made from.

When the training run is not on this server (the train stage was served by the stage cache from a run
tracked elsewhere, or ran without MLflow), it is recorded here from what the checkpoint keeps: its config as
params, ``train_metrics.json``'s history as step metrics, the loss curve as an artifact; a note on the run
says so. Found runs are reused, so registering the same content twice adds no run.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from lmops.manifest import Manifest, ManifestError, read_manifest
from lmops.registry.tracking import experiment_id, flat_params, log_params

TRAIN_KEY = "lmops.train_key"  # what the train stage tags its run with (lmops.train.stage)
NOTE = "mlflow.note.content"  # the run page's description
PARENT = "mlflow.parentRunId"  # nests a run under another in the experiment's run list
MAX_METRICS = 1000  # per log_batch request


@dataclass
class SourceRun:
    run_id: str
    name: str
    experiment_id: str
    created: bool
    parent_name: str | None = None
    """The training run a compress run is nested under (None: its checkpoint's run is unknown)."""


def training_run(client, experiment: str, model_dir: Path, manifest: Manifest) -> SourceRun:
    """The run that trained ``model_dir`` (a train stage output), recorded from the checkpoint if missing."""
    exp_id = experiment_id(client, experiment)
    found = _find(client, exp_id, f"tags.`{TRAIN_KEY}` = '{manifest.key}'")
    if found is not None:
        return SourceRun(found.info.run_id, found.info.run_name, exp_id, created=False)
    name = f"lmops-train-{manifest.key[:16]}"  # the train stage's own run name
    tags = {"lmops.stage": "train", TRAIN_KEY: manifest.key, NOTE: (
        "Recorded at registration from the checkpoint (its config, train_metrics.json and loss curve): the train"
        " stage ran without this MLflow server, or was served from the stage cache of a run tracked elsewhere.")}
    tokens = manifest.inputs.get("tokens", {}).get("digest")
    if tokens:
        tags["lmops.tokens_digest"] = tokens
    run = client.create_run(exp_id, run_name=name, tags=tags)
    run_id = run.info.run_id
    try:
        log_params(client, run_id, flat_params(manifest.config))
        _log_history(client, run_id, model_dir / "train_metrics.json")
        for artifact in ("loss_curve.png", "train_metrics.json"):
            if (model_dir / artifact).is_file():
                client.log_artifact(run_id, str(model_dir / artifact))
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.delete_run(run_id)
        raise
    return SourceRun(run_id, name, exp_id, created=True)


def compress_run(client, experiment: str, variant: str, model_dir: Path, manifest: Manifest) -> SourceRun:
    """The run of one compressed variant, nested under its checkpoint's training run when that is known."""
    exp_id = experiment_id(client, experiment)
    found = _find(client, exp_id, f"tags.`lmops.stage` = 'compress' and tags.`lmops.model_digest` = '{manifest.digest}'")
    parent = _parent_training_run(client, exp_id, manifest)
    if found is not None:
        return SourceRun(found.info.run_id, found.info.run_name, exp_id, created=False,
                         parent_name=parent.info.run_name if parent else None)
    name = f"lmops-compress-{variant}-{manifest.digest[:12]}"
    tags = {"lmops.stage": "compress", "lmops.variant": variant, "lmops.model_digest": manifest.digest,
            "lmops.compress_method": manifest.stage}
    if parent is not None:
        tags[PARENT] = parent.info.run_id
        tags[NOTE] = f"The {variant} variant of the checkpoint trained in run {parent.info.run_name}."
    run = client.create_run(exp_id, run_name=name, tags=tags)
    run_id = run.info.run_id
    try:
        log_params(client, run_id, flat_params(manifest.config))
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.delete_run(run_id)
        raise
    return SourceRun(run_id, name, exp_id, created=True, parent_name=parent.info.run_name if parent else None)


def _parent_training_run(client, exp_id: str, manifest: Manifest):
    """The training run of the checkpoint a variant was made from (its manifest's input), if findable."""
    for name in ("checkpoint", "teacher", "model"):
        spec = manifest.inputs.get(name)
        if not spec or not spec.get("path") or "://" in spec["path"]:
            continue
        try:
            upstream = read_manifest(spec["path"])
        except ManifestError:
            continue
        if upstream.digest == spec["digest"] and upstream.stage == "train":
            return _find(client, exp_id, f"tags.`{TRAIN_KEY}` = '{upstream.key}'")
    return None


def _find(client, exp_id: str, filter_string: str):
    runs = client.search_runs([exp_id], f"{filter_string} and attributes.status = 'FINISHED'", max_results=1,
                              order_by=["attributes.start_time DESC"])
    return runs[0] if runs else None


def _log_history(client, run_id: str, path: Path) -> None:
    """train_metrics.json's per-step records as the step metrics a tracked training run would have."""
    from mlflow.entities import Metric

    try:
        history = json.loads(path.read_text()).get("history", [])
    except (OSError, ValueError, AttributeError):
        return  # a checkpoint without its training record (made by hand): params and artifacts only
    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, int(rec.get("step", 0))) for rec in history if isinstance(rec, dict)
               for k, v in rec.items() if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)]
    for i in range(0, len(metrics), MAX_METRICS):
        client.log_batch(run_id, metrics=metrics[i:i + MAX_METRICS])

