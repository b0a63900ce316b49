"""What one stage Job's pod runs (the LMTrainingJob ``kubernetes`` executor): ``python -m lmops.pipeline.stage_job
STAGE --spec-b64 B64 --staging s3://.../<namespace>/<name>``.

The pod resolves the job's configuration as the pipeline's resolve-config task does, fetches its inputs from
``<staging>/<input stage>/``, runs the same ``lmops.pipeline.steps`` function a kfp component calls, and
publishes its output to ``<staging>/<stage>/`` (``manifest.json`` last, so a reader that finds the manifest
finds every file). The stage's previous output, when there is one, is fetched first: the stage's own
content-addressed cache key decides whether it is still valid (a re-applied job with unchanged inputs and
config is ``cached`` and uploads nothing), exactly as ``make run`` decides from its output folders.

The outcome goes to the pod's termination message (JSON, a few hundred bytes): the operator reads it from the
pod's status, so it needs no access to S3 itself. A failure writes ``{"stage", "error"}`` there and exits 1.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from lmops.errors import LmopsError

STAGES = ("build", "tokenize", "train", "evaluate", "compress", "register")
"""The LMTrainingJob's stages in order; train is a RayJob, the others are Jobs running this module."""
INPUTS = {"build": (), "tokenize": ("build",), "evaluate": ("train", "tokenize"), "compress": ("train", "tokenize"),
          "register": ("train", "evaluate", "compress")}
TERMINATION_LOG = "/dev/termination-log"
MESSAGE_LIMIT = 4096  # the kubelet keeps at most 4096 bytes of a termination message


def encode_spec(spec: dict[str, Any]) -> str:
    return base64.b64encode(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).decode()


def decode_spec(b64: str):
    from lmops.crd.training import parse_training_job

    try:
        raw = json.loads(base64.b64decode(b64, validate=True))
    except ValueError as e:
        raise LmopsError(f"--spec-b64: not base64 of the LMTrainingJob's spec as JSON ({e})") from None
    return parse_training_job(raw, check_config=False)


def resolved_config(spec, work: Path) -> str:
    """The config YAML every stage of the job gets (resolve-config's output), made here from the spec."""
    from lmops.pipeline import steps

    steps.resolve_config(spec.config, spec.override_list(), work / "config", model_name=spec.model_name,
                         sources=list(spec.sources), num_workers=spec.ray.workers,
                         gpus_per_worker=spec.ray.gpus_per_worker,
                         mlflow_tracking_uri=spec.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", ""))
    return (work / "config" / steps.CONFIG_FILE).read_text()


def run(stage: str, spec, staging: str, work: Path, run_id: str = "", log=print) -> dict[str, Any]:
    """Run ``stage`` of the job whose outputs live under ``staging``; returns the stage's summary row."""
    from lmops import storage
    from lmops.manifest import MANIFEST
    from lmops.pipeline import steps
    from lmops.train.kuberay.entrypoint import publish_checkpoint

    if stage not in INPUTS:
        raise LmopsError(f"stage {stage!r}: expected one of {', '.join(INPUTS)} (train runs as a RayJob)")
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)  # relative paths of the config (workdir, cache, the sample corpus) land in the pod's /tmp
    config = resolved_config(spec, work)
    dirs = {}
    for name in INPUTS[stage]:
        uri = f"{staging}/{name}"
        if not storage.exists(f"{uri}/{MANIFEST}"):
            raise LmopsError(f"{stage}: input {uri} has no {MANIFEST} (stage {name} did not finish)")
        dirs[name] = storage.download_dir(uri, work / "in" / name)
    out, uri = work / "out" / stage, f"{staging}/{stage}"
    if stage != "register" and storage.exists(f"{uri}/{MANIFEST}"):
        storage.download_dir(uri, out)  # the stage's cache key decides whether it is still valid
        log(f"[{stage}] previous output fetched from {uri}")
    if stage == "build":
        row = steps.build(config, str(out))
    elif stage == "tokenize":
        row = steps.tokenize(config, str(dirs["build"]), str(out))
    elif stage == "evaluate":
        row = steps.evaluate(config, str(dirs["train"]), str(dirs["tokenize"]), str(out))
    elif stage == "compress":
        row = steps.compress(config, str(dirs["train"]), str(dirs["tokenize"]), str(out))
    else:
        row = steps.register(config, str(dirs["train"]), str(dirs["evaluate"]), str(dirs["compress"]), str(out),
                             run_id)
    if stage == "register":
        storage.upload_dir(out, uri)
    elif row.get("status") != "cached":
        publish_checkpoint(out, uri)
        log(f"[{stage}] published {uri}")
    return row


def termination_message(row: dict[str, Any]) -> str:
    """The row's fields the operator shows, as JSON within the kubelet's 4096 bytes."""
    metrics = {k: v for k, v in (row.get("metrics") or {}).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    keep = {k: row[k] for k in ("stage", "status", "seconds", "digest", "gate_passed", "model_uri",
                                "candidate_version", "error") if k in row}
    out = {**keep, "metrics": metrics, "detail": str(row.get("detail", ""))[:600],
           "gate_reasons": [str(r)[:200] for r in row.get("gate_reasons") or []][:5]}
    text = json.dumps(out, default=str)
    while len(text.encode()) > MESSAGE_LIMIT and out["metrics"]:
        out["metrics"].popitem()
        text = json.dumps(out, default=str)
    return text


def _write_message(text: str) -> None:
    try:
        Path(TERMINATION_LOG).write_text(text)
    except OSError as e:  # outside a pod (no kubelet-mounted file): the log line below still says it
        print(f"[stage-job] termination message not written ({e})", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lmops.pipeline.stage_job",
                                 description="Run one stage of an LMTrainingJob (in its Job's pod).")
    ap.add_argument("stage", choices=[s for s in STAGES if s != "train"])
    ap.add_argument("--spec-b64", required=True, help="the LMTrainingJob's spec, base64 of its JSON")
    ap.add_argument("--staging", required=True, help="s3:// prefix of the job's stage outputs")
    ap.add_argument("--run-id", default="", help="recorded on the registered versions (lineage)")
    ap.add_argument("--work", default="/tmp/lmops-stage", help="local working folder")
    args = ap.parse_args(argv)
    started = time.time()
    try:
        row = run(args.stage, decode_spec(args.spec_b64), args.staging.rstrip("/"), Path(args.work), args.run_id,
                  log=lambda s: print(s, file=sys.stderr, flush=True))
    except LmopsError as e:
        print(f"lmops: error: {e}", file=sys.stderr, flush=True)
        _write_message(termination_message({"stage": args.stage, "error": str(e)[:3000]}))
        return 1
    row = {**row, "seconds": round(time.time() - started, 2)}
    text = termination_message(row)
    _write_message(text)
    print(f"[stage-job] {text}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
