"""The RayJob's entrypoint, run on the head pod: ``python -m lmops.train.rayjob run --tokens URI --out URI
--config-b64 B64`` fetches the tokens, runs the ordinary ``train_stage`` against the job's Ray cluster
(RAY_ADDRESS is set there) and uploads the checkpoint directory, ``manifest.json`` last. ``build --out URI``
and ``tokenize --dataset URI --out URI`` do the same for the data stages on Ray Data (their workers read
the sources or the dataset's shards from S3 themselves)."""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from lmops import storage
from lmops.config import Config
from lmops.errors import LmopsError
from lmops.train.kuberay.render import decode_config
from lmops.train.kuberay.submit import LOG_PREFIX

CACHED = "is cached (same key); nothing trained or uploaded"
"""What the job's log says when the checkpoint there is still valid (the operator reads it from the submitter's
log: a RayJob's status has nowhere to carry it)."""


# ---------------------------------------------------------------- the entrypoint (runs on the head pod)
def run(cfg: Config, tokens_uri: str, checkpoint_uri: str, *, work_dir: str | Path | None = None,
        log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)):
    """Fetch the tokens, train against this job's Ray cluster, publish the checkpoint at ``checkpoint_uri``."""
    from lmops.train.ray_train import ensure_ray
    from lmops.train.stage import train_stage

    work = Path(work_dir or tempfile.gettempdir()) / "lmops-rayjob"
    tokens = stage_tokens(tokens_uri, work / "tokens" / _short(tokens_uri))
    log(f"{LOG_PREFIX} tokens: {tokens_uri} -> {tokens}")
    local_ray = ensure_ray()
    if storage.is_s3(tokens_uri) and not local_ray:
        # the ranks open the tokens by the driver's local path: give every node the same copy
        fetch_on_every_node(tokens_uri, tokens, log=log)
    source = tokens_uri if storage.is_s3(tokens_uri) else None
    if not storage.is_s3(checkpoint_uri):
        return train_stage(cfg, tokens, checkpoint_uri, cache_dir=None, log=log, tokens_source=source)
    out = work / "checkpoint" / _short(checkpoint_uri)
    from lmops.manifest import MANIFEST

    if storage.exists(f"{checkpoint_uri.rstrip('/')}/{MANIFEST}"):
        # an earlier run's checkpoint there: train_stage's cache key says whether it is still this run's
        storage.download_dir(checkpoint_uri, out)
    result = train_stage(cfg, tokens, out, cache_dir=None, log=log, tokens_source=source)
    if result.cached:
        log(f"{LOG_PREFIX} checkpoint at {checkpoint_uri} {CACHED}")
        return result
    publish_checkpoint(result.path, checkpoint_uri)
    log(f"{LOG_PREFIX} checkpoint: {result.path} -> {checkpoint_uri}")
    return result


def run_build(cfg: Config, dataset_uri: str, *, work_dir: str | Path | None = None,
              log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)):
    """Build ``cfg.build.sources`` on this job's Ray cluster; publish the dataset directory at ``dataset_uri``."""
    from lmops.data.build import build_dataset

    work = Path(work_dir or tempfile.gettempdir()) / "lmops-rayjob"
    result = build_dataset(cfg.build, work / "dataset" / _short(dataset_uri), cache_dir=None, log=log)
    publish_checkpoint(result.path, dataset_uri)
    log(f"[build] dataset: {result.path} -> {dataset_uri}")
    return result


def run_tokenize(cfg: Config, dataset_uri: str, tokens_uri: str, *, work_dir: str | Path | None = None,
                 log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)):
    """Tokenize the dataset at ``dataset_uri`` on this job's Ray cluster; publish the tokens at ``tokens_uri``.

    The driver fetches the dataset (its manifest verifies every shard, and the tokenizer's sample comes from
    it); the workers read their byte ranges of the shards from ``dataset_uri`` itself."""
    from lmops.data.tokenize import tokenize_dataset

    work = Path(work_dir or tempfile.gettempdir()) / "lmops-rayjob"
    try:
        dataset = storage.download_dir(dataset_uri, work / "dataset" / _short(dataset_uri))
    except storage.StorageError as e:
        raise storage.StorageError(f"--dataset: cannot fetch the dataset: {e}") from None
    shards = dataset_uri if storage.is_s3(dataset_uri) else None
    result = tokenize_dataset(cfg.tokenize, dataset, work / "tokens" / _short(tokens_uri), cache_dir=None, log=log,
                              shards_uri=shards)
    publish_checkpoint(result.path, tokens_uri)
    log(f"[tokenize] tokens: {result.path} -> {tokens_uri}")
    return result


def stage_tokens(uri: str, dest: str | Path) -> Path:
    """A local directory with the tokenize stage's output: an s3:// prefix downloaded to ``dest``, or
    a local directory as it is. train_stage verifies every file against its manifest afterwards."""
    if not storage.is_s3(uri):
        path = Path(uri)
        if not path.is_dir():
            raise LmopsError(f"--tokens {uri}: directory not found (expected the tokenize stage's output)")
        return path
    try:
        return storage.download_dir(uri, dest)
    except storage.StorageError as e:
        raise storage.StorageError(f"--tokens: cannot fetch the token shards: {e}") from None


def fetch_on_every_node(uri: str, dest: Path, *, log: Callable[[str], None]) -> None:
    """Download ``uri`` to ``dest`` on every other alive node of the Ray cluster (tasks pinned per node)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n["NodeID"] != here]
    fetch = ray.remote(num_cpus=0)(stage_tokens)
    ray.get([fetch.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=n, soft=False))
             .remote(uri, str(dest)) for n in nodes])
    log(f"{LOG_PREFIX} tokens copied to {len(nodes)} other node(s)")


def publish_checkpoint(src: Path, uri: str) -> None:
    """Upload a stage output directory, ``manifest.json`` last: a reader that finds the manifest finds
    every file it names."""
    from lmops.manifest import MANIFEST

    src = Path(src)
    with tempfile.TemporaryDirectory(prefix="lmops-publish-") as tmp:
        body = Path(tmp) / "body"
        for path in sorted(p for p in src.rglob("*") if p.is_file() and p != src / MANIFEST):
            target = body / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, target)  # same file system: no copy of the weights
            except OSError:
                shutil.copy2(path, target)
        if body.is_dir():
            storage.upload_dir(body, uri)
    storage.write_bytes(f"{uri.rstrip('/')}/{MANIFEST}", (src / MANIFEST).read_bytes())


def _short(uri: str) -> str:
    """A stable directory name per URI: the same path on every node, and across retries in one pod."""
    return hashlib.sha256(uri.encode()).hexdigest()[:16]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmops.train.rayjob",
                                     description="The entrypoint of lmops' KubeRay jobs (train, build, tokenize).")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="fetch tokens, train on this Ray cluster, upload the checkpoint")
    p.add_argument("--tokens", required=True, help="the tokenize stage's output (s3:// prefix or directory)")
    p.add_argument("--out", required=True, help="where the checkpoint directory goes (s3:// prefix or directory)")
    b = sub.add_parser("build", help="build the config's sources on this Ray cluster (Ray Data), upload the dataset")
    b.add_argument("--out", required=True, help="where the dataset directory goes (s3:// prefix or directory)")
    t = sub.add_parser("tokenize", help="tokenize a dataset on this Ray cluster (Ray Data), upload the tokens")
    t.add_argument("--dataset", required=True, help="the build stage's output (s3:// prefix or directory)")
    t.add_argument("--out", required=True, help="where the tokens directory goes (s3:// prefix or directory)")
    for q in (p, b, t):
        q.add_argument("--config-b64", required=True, help="the resolved config, base64 of its JSON")
    args = parser.parse_args(argv)
    try:
        cfg = decode_config(args.config_b64)
        if args.command == "build":
            run_build(cfg, args.out)
        elif args.command == "tokenize":
            run_tokenize(cfg, args.dataset, args.out)
        else:
            run(cfg, args.tokens, args.out)
    except LmopsError as e:
        print(f"lmops: error: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
