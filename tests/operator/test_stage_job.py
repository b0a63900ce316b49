"""A stage Job's program (lmops.pipeline.stage_job) against a real S3 (moto): build then tokenize, each fetching its
inputs from and publishing its output to ``<staging>/<stage>/``; run again, each finds its output valid by its cache
key and uploads nothing; a bad source fails with the storage error as the termination message."""

from __future__ import annotations

import json

from micro_pipeline import MICRO, write_corpus

from lmops import storage
from lmops.crd.training import parse_training_job
from lmops.pipeline import stage_job


def _spec(bucket: str, sources: list[str]):
    return parse_training_job({"modelName": "m", "config": "micro", "sources": sources,
                               "overrides": dict(item.split("=", 1) for item in MICRO)})


def test_stages_pass_outputs_through_s3_and_a_rerun_is_cached(s3, tmp_path, monkeypatch):
    _, bucket = s3
    storage.upload_dir(write_corpus(tmp_path / "corpus", docs=60), f"s3://{bucket}/corpus")
    spec, staging = _spec(bucket, [f"s3://{bucket}/corpus/"]), f"s3://{bucket}/staging/ns/job"
    monkeypatch.chdir(tmp_path)
    rows = [stage_job.run(stage, spec, staging, tmp_path / f"w{i}-{stage}", log=lambda s: None)
            for i in (1, 2) for stage in ("build", "tokenize")]
    assert [r["status"] for r in rows] == ["ran", "ran", "cached", "cached"]
    assert storage.exists(f"{staging}/tokenize/manifest.json") and rows[1]["digest"] == rows[3]["digest"]
    msg = json.loads(stage_job.termination_message(rows[1]))
    assert msg["stage"] == "tokenize" and msg["status"] == "ran" and len(json.dumps(msg)) < 4096


def test_a_bad_source_is_the_termination_message(s3, tmp_path, monkeypatch):
    _, bucket = s3
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "termination-log"
    monkeypatch.setattr(stage_job, "TERMINATION_LOG", str(out))
    spec = {"modelName": "m", "config": "micro", "sources": [f"s3://{bucket}/missing/"]}
    rc = stage_job.main(["build", "--spec-b64", stage_job.encode_spec(spec), "--staging", f"s3://{bucket}/st",
                         "--work", str(tmp_path / "w")])
    assert rc == 1
    error = json.loads(out.read_text())["error"]
    assert f"s3://{bucket}/missing/" in error and "nothing matches" in error
