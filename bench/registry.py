"""Benchmark: registration time of a model directory against a plain ``log_artifacts`` of the same directory.

    .venv/bin/python bench/registry.py [--repeats 5] [--sizes tiny,10m] [--tracking-uri URI]

Starts its own local ``mlflow server`` (sqlite + local artifacts, own process group) unless
``--tracking-uri`` is given. Per model size:
- ``register``: ``lmops.registry.register_variants`` of one variant — verify every file against the
  manifest, health check, find the training run (recorded once, at the first registration), a logged
  model of it (pyfunc, HF directory inside) with its metrics, lineage.json, upload, model version with its
  tags and description, candidate alias, its history and the history table. A fresh model name per
  repeat, so no version is reused.
- ``baseline``: ``create_run`` + ``log_artifacts(model_dir)`` + ``set_terminated`` — the least any
  registration must do: get the same bytes onto the server.
- ``reuse``: registering the same content again (a retried pipeline step), which finds the version.
Runs are interleaved (register, baseline, register, ...) and medians reported; the per-pair ratio is
the figure to compare across machines.
"""

from __future__ import annotations

import os
import sys

# bench/ holds tokenize.py, which would shadow the stdlib module of that name: take this folder off sys.path
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from lmops.config import RegistryConfig  # noqa: E402
from lmops.gates import Verdict  # noqa: E402
from lmops.manifest import run_stage  # noqa: E402
from lmops.registry import Variant, client_for, register_variants  # noqa: E402
from lmops.registry.local_server import start_mlflow_server, stop_process_group  # noqa: E402

SIZES = {  # (vocab, d_model, layers, d_ff)
    "tiny": (300, 32, 1, 64),
    "10m": (8192, 256, 10, 704),
}


def make_model_dir(out: Path, size: str) -> tuple[Path, int]:
    vocab, d, layers, ff = SIZES[size]
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=d, intermediate_size=ff, num_hidden_layers=layers,
                      num_attention_heads=4 if d >= 64 else 2, num_key_value_heads=4 if d >= 64 else 2,
                      max_position_embeddings=256, tie_word_embeddings=True, bos_token_id=0, eos_token_id=0,
                      pad_token_id=1)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    params = sum(p.numel() for p in model.parameters())
    run_stage("train", out, code="bench.registry", config={"size": size}, inputs={},
              produce=lambda tmp: model.save_pretrained(tmp) or {"counts": {"params": params}}, log=lambda s: None)
    return out, params


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def bench_size(uri: str, model_dir: Path, repeats: int) -> dict[str, float]:
    client = client_for(uri)
    exp = client.get_experiment_by_name("bench-baseline")
    exp_id = exp.experiment_id if exp else client.create_experiment("bench-baseline")
    metrics = {"perplexity": 100.0, "size_bytes": sum(p.stat().st_size for p in model_dir.iterdir())}
    variant = Variant("fp32", model_dir, metrics, Verdict(True, ["PASS bench"]))

    def register(name: str) -> None:
        register_variants([variant], RegistryConfig(tracking_uri=uri, model_name=name, experiment="bench-register"))

    def baseline() -> None:
        run_id = client.create_run(exp_id).info.run_id
        client.log_artifacts(run_id, str(model_dir), "model")
        client.set_terminated(run_id)

    register(f"bench-warmup-{uuid.uuid4().hex[:6]}")  # imports, experiment creation
    baseline()
    reg, base, reuse = [], [], []
    for _ in range(repeats):
        name = f"bench-{uuid.uuid4().hex[:8]}"
        reg.append(timed(lambda: register(name)))
        base.append(timed(baseline))
        reuse.append(timed(lambda: register(name)))
    ratios = [r / b for r, b in zip(reg, base)]
    return {"register_s": statistics.median(reg), "baseline_s": statistics.median(base),
            "ratio": statistics.median(ratios), "reuse_s": statistics.median(reuse)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sizes", default="tiny,10m")
    ap.add_argument("--tracking-uri", help="use this server instead of starting one")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="lmops-bench-registry-") as tmp:
        root = Path(tmp)
        proc = None
        uri = args.tracking_uri
        if uri is None:
            started = time.perf_counter()
            proc, uri = start_mlflow_server(root / "mlflow", str(root / "mlflow" / "artifacts"))
            print(f"mlflow server {uri} healthy after {time.perf_counter() - started:.1f}s")
        try:
            print(f"{'model':<6} {'params':>11} {'MB':>7} {'register':>9} {'log_artifacts':>14} {'ratio':>6} {'reuse':>7}")
            for size in args.sizes.split(","):
                model_dir, params = make_model_dir(root / f"model-{size}", size)
                mb = sum(p.stat().st_size for p in model_dir.iterdir()) / 1e6
                r = bench_size(uri, model_dir, args.repeats)
                print(f"{size:<6} {params:>11,} {mb:>7.2f} {r['register_s']:>8.2f}s {r['baseline_s']:>13.2f}s"
                      f" {r['ratio']:>5.2f}x {r['reuse_s']:>6.2f}s")
        finally:
            if proc is not None:
                stop_process_group(proc)
    print(f"(median of {args.repeats} interleaved runs; ratio = median of per-pair register / log_artifacts)")


if __name__ == "__main__":
    main()
