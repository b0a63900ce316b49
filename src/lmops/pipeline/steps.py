"""What each kfp component does, as plain functions: config in, stage output directory out, and a summary.

A component is a typed signature (kfp artifacts and parameters) that calls one of these; everything
testable lives here. Each step returns the summary row of its stage (``status`` ran/cached, ``seconds``,
``digest``, ``detail`` and the stage's figures), which the component records as its output artifact's
metadata: the Kubeflow UI shows it beside the artifact, and ``make run`` prints its closing table from it.

The configuration is resolved once, by ``resolve_config`` (preset or YAML, ``--set``-style overrides, and
the pipeline's own parameters mapped onto config fields), and travels to every later task as a string
parameter holding that YAML: every task reads exactly the same validated configuration, and Kubeflow's cache
key of a task (its input parameter values and input artifacts' ids, image and command:
backend/src/v2/cacheutils/cache.go) then depends on the configuration's content. As an artifact it would
depend on the identity of a new artifact every run (resolve-config is never cached), so no task downstream
could ever hit the cache.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from lmops.config import Config, config_from_dict, load_config
from lmops.errors import LmopsError

CONFIG_FILE = "config.yaml"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def record(artifact: Any, row: dict[str, Any], metrics: Any = None) -> None:
    """The summary row as the artifact's metadata; its numeric figures also into a kfp ``Metrics`` output
    (nested figures flattened as ``variant.name``), which the Kubeflow UI tabulates and compares across runs."""
    artifact.metadata.update(_plain(row))
    if metrics is not None:
        for key, value in _flat(row.get("metrics", {})).items():
            metrics.log_metric(key, value)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = v
    return out


# ---------------------------------------------------------------- config
def resolve_config(config: str, overrides: list[str], out_dir: str | Path, *, model_name: str = "",
                   sources: list[str] | None = None, num_workers: int = 0, gpus_per_worker: int = -1,
                   mlflow_tracking_uri: str = "", deploy_target: str = "", cache_dir: str = "",
                   node_selector: dict | None = None, tolerations: list | None = None) -> dict[str, Any]:
    """Preset/YAML + overrides + pipeline parameters -> ``out_dir/config.yaml``; returns a summary.

    An empty / negative parameter means "as the config says". Relative local paths (sources, workdir) become
    absolute: tasks may run in other directories.
    """
    params = list(overrides or [])
    if model_name:
        params.append(f"registry.model_name={model_name}")
    if num_workers > 0:
        params.append(f"train.num_workers={num_workers}")
    if gpus_per_worker >= 0:
        params += [f"train.use_gpu={'true' if gpus_per_worker > 0 else 'false'}",
                   f"kuberay.gpus_per_worker={gpus_per_worker}"]
    if mlflow_tracking_uri:
        params += [f"registry.tracking_uri={mlflow_tracking_uri}", f"train.mlflow_tracking_uri={mlflow_tracking_uri}"]
    if deploy_target:
        params.append(f"deploy.target={deploy_target}")
    if cache_dir:
        params.append(f"cache_dir={cache_dir}")
    cfg = load_config(config or None, params)
    if sources:
        cfg = cfg.model_copy(update={"build": cfg.build.model_copy(update={"sources": list(sources)})})
    scheduling = {k: v for k, v in (("node_selector", node_selector), ("tolerations", tolerations)) if v}
    if scheduling:  # the RayJob's GPU workers go where the pipeline's GPU pods go
        cfg = config_from_dict({**cfg.model_dump(mode="json"),
                                "kuberay": {**cfg.kuberay.model_dump(mode="json"), **scheduling}})
    cfg = _absolute_paths(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return {"status": "ran", "seconds": 0.0, "digest": cfg.digest()[:12], "path": str(out),
            "detail": f"config {cfg.name}: {cfg.model.preset} model, {cfg.train.max_steps} steps x "
                      f"{cfg.train.num_workers} worker(s), registry model {cfg.registry.model_name!r}"}


def _absolute_paths(cfg: Config) -> Config:
    from lmops import storage
    from lmops.data.sample_corpus import ensure_sample_corpus

    ensure_sample_corpus(cfg.build.sources)  # the default source is made on first use, offline
    sources = [s if storage.is_s3(s) or Path(s).is_absolute() else str(Path(s).resolve()) for s in cfg.build.sources]
    return cfg.model_copy(update={"build": cfg.build.model_copy(update={"sources": sources}),
                                  "workdir": str(Path(cfg.workdir).resolve())})


def resolved_outputs(config_dir: str | Path, launcher: str, pod_gpus: int, node_selector: dict | None = None,
                     tolerations: list | None = None) -> dict[str, Any]:
    """What resolve-config hands the later tasks: the config YAML (their ``config`` parameter), the cpu image
    of every task, and the train task's pod (lmops.pipeline.task_pods)."""
    from lmops.pipeline.task_pods import train_pod

    path = Path(config_dir) / CONFIG_FILE
    cfg = read_config(path)
    pod = train_pod(cfg, launcher, pod_gpus, node_selector, tolerations)
    return {"config": path.read_text(), "cpu_image": cfg.image.ref("cpu"),
            **{f"train_{k}": v for k, v in pod.items()}}


def parse_config(text: str) -> Config:
    """The configuration a task got as its ``config`` parameter (the YAML resolve-config wrote); in a Kubeflow
    pod also the S3 endpoint of ``pipeline.s3_endpoint_url`` (kubeflow_env)."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise LmopsError(f"config parameter: not YAML ({e}); expected resolve-config's output") from None
    if not isinstance(raw, dict):
        raise LmopsError("config parameter: expected the YAML mapping resolve-config writes")
    cfg = config_from_dict(raw, "config parameter")
    kubeflow_env(cfg)
    return cfg


def kubeflow_env(cfg: Config, environ: dict | None = None) -> None:
    """In a Kubeflow task pod (the KFP_POD_NAME its launcher sets), LMOPS_S3_ENDPOINT_URL from the config unless the
    pod has one. Not compiled into the task's env: kfp's local runner applies a task's env over the caller's,
    so a compiled-in endpoint would point `make run`'s S3 at the cluster's MinIO."""
    environ = os.environ if environ is None else environ
    if environ.get("KFP_POD_NAME") and cfg.pipeline.s3_endpoint_url and not environ.get("LMOPS_S3_ENDPOINT_URL"):
        environ["LMOPS_S3_ENDPOINT_URL"] = cfg.pipeline.s3_endpoint_url


def read_config(config_dir: str | Path) -> Config:
    """The configuration a ``resolve_config`` task wrote (a directory holding config.yaml, or the file)."""
    path = Path(config_dir)
    path = path / CONFIG_FILE if path.is_dir() else path
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise LmopsError(f"{path}: resolved config not found (the config task's output)") from None
    return config_from_dict(raw, str(path))


# ---------------------------------------------------------------- stages
def _timed(stage: str, run) -> dict[str, Any]:
    from lmops.pipeline.summary import stage_row

    started = time.time()
    res = run()
    return {**stage_row(stage, res, time.time() - started), "metrics": _plain(res.manifest.metrics)}


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    """Figures only, JSON-safe: kfp metadata and Metrics take numbers, strings and booleans."""
    return json.loads(json.dumps(d, default=str))


def build(config: str, out_dir: str, launcher: str = "local", dataset_uri: str = "") -> dict[str, Any]:
    """Build in this process, or with ``launcher: kuberay`` and the ray engine as a RayJob (data_on_kuberay)
    whose dataset goes to ``dataset_uri`` (the task's output artifact) and is fetched into ``out_dir``."""
    from lmops.data import engine
    from lmops.data.build import build_dataset

    cfg = parse_config(config)
    if launcher == "kuberay" and engine.resolve(cfg.build.engine, launcher) == "ray":
        return data_on_kuberay("build", cfg, out_dir, output_uri=dataset_uri or out_dir)
    return _timed("build", lambda: build_dataset(cfg.build, out_dir, cache_dir=cfg.cache_dir))


def tokenize(config: str, dataset_dir: str, out_dir: str, launcher: str = "local", dataset_uri: str = "",
             tokens_uri: str = "") -> dict[str, Any]:
    """Tokenize in this process, or with ``launcher: kuberay`` and the ray engine as a RayJob (data_on_kuberay)."""
    from lmops.data import engine
    from lmops.data.tokenize import tokenize_dataset

    cfg = parse_config(config)
    if launcher == "kuberay" and engine.resolve(cfg.tokenize.engine, launcher) == "ray":
        return data_on_kuberay("tokenize", cfg, out_dir, output_uri=tokens_uri or out_dir,
                               input_uri=dataset_uri or dataset_dir, input_dir=dataset_dir)
    return _timed("tokenize", lambda: tokenize_dataset(cfg.tokenize, dataset_dir, out_dir, cache_dir=cfg.cache_dir))


def data_on_kuberay(stage: str, cfg: Config, out_dir: str, *, output_uri: str, input_uri: str | None = None,
                    input_dir: str | None = None) -> dict[str, Any]:
    """Run build or tokenize as a KubeRay RayJob on Ray Data, then fetch its output into ``out_dir``.

    The job reads its input and writes its output in S3, as training's does: an artifact in S3 as it is (the
    output beside the task's own artifact, ``<uri>.rayjob``), else through ``kuberay.staging_uri`` (the input
    uploaded once per content digest, the output under ``jobs/<namespace>/<job>``). The job's name follows the
    config, the input and the output, so a retried task re-attaches to its job and a finished one is not rerun.
    """
    import hashlib

    from lmops import storage
    from lmops.manifest import read_manifest
    from lmops.train.kuberay.staging import stage_output_dir, staging_prefix
    from lmops.train.kuberay.submit import stage_log
    from lmops.train.rayjob import stage_on_kuberay

    started = time.time()
    say = stage_log(log, stage)
    output_uri, input_uri = s3_uri(output_uri), s3_uri(input_uri) if input_uri else None
    key = json.dumps([cfg.digest(), input_uri, output_uri, out_dir])
    name = f"lmops-{stage}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    if input_uri is not None and not storage.is_s3(input_uri):
        where = staging_prefix(cfg, f"the input is at {input_uri!r}, not in S3", stage)
        input_uri = stage_output_dir(input_dir or input_uri, where, "build", log=say)
    if storage.is_s3(output_uri):
        output_uri = output_uri.rstrip("/") + ".rayjob"  # the task's own artifact is written after it ends
    else:
        where = staging_prefix(cfg, f"the output goes to {output_uri!r}, not to S3", stage)
        output_uri = f"{where}/jobs/{cfg.kuberay.namespace}/{name}"
    status = stage_on_kuberay(stage, cfg, name=name, input_uri=input_uri, output_uri=output_uri, log=log)
    storage.download_dir(output_uri, Path(out_dir))
    m = read_manifest(out_dir, stage)
    return {"stage": stage, "status": "ran", "seconds": round(time.time() - started, 2), "path": str(out_dir),
            "digest": m.digest[:12], "detail": f"RayJob {name}: {status.get('status', {}).get('jobStatus')}",
            "metrics": _plain(m.metrics)}


def train(config: str, tokens_dir: str, out_dir: str, gpus: int = 0) -> dict[str, Any]:
    """Ray Train in this process's Ray: a local one, or the cluster RAY_ADDRESS names."""
    from lmops.train.stage import train_stage

    cfg = parse_config(config)
    if gpus > 0 and not os.environ.get("RAY_ADDRESS"):
        import torch

        if torch.cuda.device_count() < gpus:
            raise LmopsError(f"train: this pod was given {gpus} GPU(s) but sees {torch.cuda.device_count()}"
                             " (is the NVIDIA device plugin running on the node?)")
    return _timed("train", lambda: train_stage(cfg, tokens_dir, out_dir, cache_dir=cfg.cache_dir))


def train_on_kuberay(config: str, tokens_uri: str, out_dir: str, *, job_name: str,
                     checkpoint_uri: str, tokens_dir: str | None = None) -> dict[str, Any]:
    """Submit a KubeRay RayJob that trains from ``tokens_uri`` into ``checkpoint_uri`` (shared storage),
    wait for it, then fetch the checkpoint into ``out_dir`` (the task's output artifact).

    Artifacts outside S3 (``tokens_dir``: where this task reads the tokens) go through
    ``kuberay.staging_uri`` (lmops.train.kuberay.staging)."""
    from lmops import storage
    from lmops.manifest import read_manifest
    from lmops.train.kuberay.staging import job_uris
    from lmops.train.rayjob import train_on_kuberay as submit

    cfg = parse_config(config)
    started = time.time()
    tokens, checkpoint = job_uris(cfg, s3_uri(tokens_uri), tokens_dir or tokens_uri, s3_uri(checkpoint_uri),
                                  job_name=job_name, log=log)
    status = submit(cfg, tokens, checkpoint, name=job_name, log=log)
    storage.download_dir(checkpoint, Path(out_dir))
    m = read_manifest(out_dir, "train")
    return {"stage": "train", "status": "ran", "seconds": round(time.time() - started, 2), "path": str(out_dir),
            "digest": m.digest[:12], "detail": f"RayJob {job_name}: {status.get('status', {}).get('jobStatus')}",
            "metrics": _plain(m.metrics)}


def s3_uri(uri: str) -> str:
    """kfp names MinIO artifacts minio://bucket/key; lmops.storage speaks s3:// (endpoint from the env)."""
    return "s3://" + uri[len("minio://"):] if uri.startswith("minio://") else uri


def evaluate(config: str, checkpoint_dir: str, tokens_dir: str, out_dir: str) -> dict[str, Any]:
    """Evaluate and gate against the champion's recorded metrics when an MLflow server is configured."""
    from lmops.evaluate.stage import evaluate_stage

    cfg = parse_config(config)
    baseline, against = champion_baseline(cfg, Path(out_dir).parent / "champion-eval.json")
    row = _timed("evaluate", lambda: evaluate_stage(cfg, checkpoint_dir, tokens_dir, out_dir, baseline=baseline,
                                                    cache_dir=cfg.cache_dir))
    gate = json.loads((Path(out_dir) / "gate.json").read_text())
    return {**row, "gate_passed": bool(gate["passed"]), "gate_reasons": gate["reasons"],
            "baseline": against or "none (first model: absolute bounds only)"}


def champion_baseline(cfg: Config, dest: Path) -> tuple[Path | None, str | None]:
    """The champion's metrics written as an eval.json to gate against, or (None, None) without one."""
    if not (cfg.registry.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")):
        return None, None
    from lmops.registry.register import champion_metrics

    metrics, against = champion_metrics(cfg)
    if metrics is None:
        return None, None
    dest.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return dest, against


def compress(config: str, checkpoint_dir: str, tokens_dir: str, out_dir: str) -> dict[str, Any]:
    from lmops.compress.stage import compress_stage

    cfg = parse_config(config)
    return _timed("compress", lambda: compress_stage(cfg, checkpoint_dir, tokens_dir, out_dir, cache_dir=cfg.cache_dir))


def register(config: str, checkpoint_dir: str, eval_dir: str, compressed_dir: str, out_dir: str,
             pipeline_run_id: str = "") -> dict[str, Any]:
    """Register the model and its compressed variants; returns the candidate's ``models:/`` URI."""
    from lmops.registry.register import register_dir

    cfg = parse_config(config)
    started = time.time()
    reg, gating = register_dir(checkpoint_dir, eval_dir, cfg, compressed=compressed_dir,
                               pipeline_run_id=pipeline_run_id or None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "registration.json").write_text(json.dumps({**reg.to_dict(), "gating": gating}, indent=2) + "\n")
    versions = ", ".join(f"{v.variant} v{v.version}{'' if v.passed else ' (gates failed)'}" for v in reg.versions)
    uri = f"models:/{reg.name}/{reg.candidate}" if reg.candidate else ""
    return {"stage": "register", "status": "ran", "seconds": round(time.time() - started, 2), "path": str(out),
            "digest": "", "model_uri": uri, "candidate_version": reg.candidate or "",
            "detail": f"{reg.name}: {versions}; alias {cfg.registry.candidate_alias!r} -> "
                      f"{'v' + reg.candidate if reg.candidate else 'none (no variant passed)'}"}


def deploy(config: str, model_uri: str, out_dir: str) -> dict[str, Any]:
    """Serve ``model_uri``: a local KServe model server (replacing this model name's previous one unless it
    already serves this registered version with these settings), or an
    InferenceService on Kubernetes; returns the endpoint and one example generation."""
    from lmops.pipeline.servers import deploy_and_record

    cfg = parse_config(config)
    if not model_uri:
        raise LmopsError("deploy: no model to deploy (no registered variant passed its gates)")
    started = time.time()
    endpoint = deploy_and_record(cfg, model_uri, Path(out_dir))
    status = "reused" if endpoint.get("reused") else "ran"  # the server already serving exactly this was kept
    return {"stage": "deploy", "status": status, "seconds": round(time.time() - started, 2), "path": str(out_dir),
            "digest": "", "url": endpoint.get("url") or "", "example": endpoint.get("example", {}),
            "detail": f"{model_uri} at {endpoint.get('url')}"}
