"""build and tokenize as KubeRay RayJobs (``launcher: kuberay``, the ray engine) on the real API server, the KubeRay
stand-in running their Ray clusters as pods of the lmops image: the same dataset and the same token shards, byte for
byte, as the local engine on the same s3:// input. The steps are the pipeline's (lmops.pipeline.steps), called as
the build and tokenize components call them on a Kubeflow whose artifacts are in S3."""

from __future__ import annotations

import shlex

import pytest
import yaml
from ray_pods import SMALL_DATA_HEAD, SMALL_DATA_WORKERS

from lmops import kube, storage
from lmops.config import config_from_dict
from lmops.data.build import build_dataset
from lmops.data.sample_corpus import make_sample_corpus
from lmops.data.tokenize import tokenize_dataset
from lmops.manifest import read_manifest
from lmops.pipeline import steps

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
# 0.8 MB of the sample corpus with exact and near duplicates: the pods' one CPU reads it in seconds
SMALL_PART = ("docstrings-01.jsonl", "reference-00.jsonl")


def test_build_and_tokenize_as_rayjobs_on_pods_give_the_local_engines_bytes(
        kube_cluster, node_image, kube_namespace, kube_s3_secret, s3, pod_s3_env, tmp_path, capsys):
    client, ns = kube_cluster.client(), kube_namespace
    _, bucket = s3
    corpus = make_sample_corpus(tmp_path / "corpus")
    for name in SMALL_PART:
        storage.write_bytes(f"s3://{bucket}/corpus/{name}", (corpus / name).read_bytes())
    cfg = config_from_dict({
        "workdir": str(tmp_path), "cache_dir": None,
        "build": {"sources": [f"s3://{bucket}/corpus/"], "engine": "auto", "ray": SMALL_DATA_WORKERS},
        # small encode blocks: the worker pod reads many byte ranges of each shard from S3
        "tokenize": {"vocab_size": 512, "batch_size": 64, "engine": "ray", "ray": {**SMALL_DATA_WORKERS,
                                                                                   "block_mb": 0.1}},
        "kuberay": {"namespace": ns, **SMALL_DATA_HEAD, "env_from_secrets": [kube_s3_secret], "env": pod_s3_env,
                    "poll_s": 0.5, "timeout_s": 600}})
    config = yaml.safe_dump(cfg.model_dump(mode="json"))  # what the components get from resolve-config
    run = f"s3://{bucket}/run"

    built = steps.build(config, str(tmp_path / "dataset"), "kuberay", f"{run}/dataset")
    tokens = steps.tokenize(config, str(tmp_path / "dataset"), str(tmp_path / "tokens"), "kuberay",
                            f"{run}/dataset.rayjob", f"{run}/tokens")
    log = capsys.readouterr().err

    # each ran as a RayJob of its own, to success, with its output beside the task's artifact
    jobs = {j["metadata"]["labels"]["app.kubernetes.io/component"]: j for j in kube.list_objects(
        "ray.io/v1", "RayJob", ns, client=client)[0]}
    assert set(jobs) == {"build", "tokenize"}
    for stage, row in (("build", built), ("tokenize", tokens)):
        job = jobs[stage]
        assert job["status"]["jobStatus"] == "SUCCEEDED", job["status"]
        assert row["detail"] == f"RayJob {job['metadata']['name']}: SUCCEEDED"
        argv = shlex.split(job["spec"]["entrypoint"])
        output = f"{run}/{'dataset' if stage == 'build' else 'tokens'}.rayjob"
        assert argv[3] == stage and argv[argv.index("--out") + 1] == output
        assert f"[{stage}] RayJob {ns}/{job['metadata']['name']}: Running -> Complete (job SUCCEEDED)" in log
    assert built["metrics"]["engine"] == "ray" and tokens["metrics"]["engine"] == "ray"

    # the local engine on the same s3:// sources, in this process
    local = build_dataset(cfg.build.model_copy(update={"engine": "local"}), tmp_path / "local-dataset",
                          log=lambda s: None)
    pods = read_manifest(tmp_path / "dataset", "build")
    assert pods.key == local.manifest.key and pods.files == local.manifest.files  # every shard's sha256
    assert pods.counts == local.manifest.counts  # kept, dropped by reason, splits, the report
    dropped = local.manifest.counts["documents"]["dropped"]
    assert dropped["near_duplicate"] > 0 and dropped["exact_duplicate"] > 0
    local_tokens = tokenize_dataset(cfg.tokenize.model_copy(update={"engine": "local"}), local.path,
                                    tmp_path / "local-tokens", log=lambda s: None)
    pod_tokens = read_manifest(tmp_path / "tokens", "tokenize")
    assert pod_tokens.files == local_tokens.manifest.files and pod_tokens.counts == local_tokens.manifest.counts
    for split in ("train", "val", "test"):
        assert (tmp_path / "tokens" / f"{split}.bin").read_bytes() == (local_tokens.path / f"{split}.bin").read_bytes()
